//! glibc's malloc, set up before the first thread starts.

/// Sets glibc's allocator up for moving bytes between sockets: one arena
/// and a trim threshold of [`TRIM_THRESHOLD`], each unless the environment
/// already chose it (`MALLOC_ARENA_MAX`, `MALLOC_TRIM_THRESHOLD_`, or the
/// `glibc.malloc.arena_max` / `trim_threshold` tunables).
///
/// One arena: by default glibc gives each thread that allocates an arena
/// of its own (up to eight per core), and a chunk freed into one arena
/// serves only the threads of that arena. A tunnel's buffers are often made
/// on one worker thread and freed on another, so each arena grew to its own
/// peak. With one arena every free chunk is reused; small allocations still
/// take no lock (glibc's per-thread cache). Measured on the 2-core bench
/// machine: the server's peak RSS under 16 parallel 1 MiB downloads went
/// from 15.7-17.7 to 13.4-14.2 MiB, and under 64 keep-alive connections
/// from 12.2-13.0 to 11.6-11.8 MiB, with CPU per request and MiB/s
/// unchanged within noise.
///
/// The trim threshold: glibc hands free memory at the top of its heap back
/// to the kernel once there is more than 128 KiB of it, and a download's
/// frames come and go by more than that. The client then gave pages back
/// and took them again all along: 2.6 to 86 page faults per MiB forwarded
/// over four runs, and 360-480 µs of its CPU per MiB. Keeping up to 1 MiB
/// took the faults to 0.1-1.7 per MiB, the client to 307-320 µs per MiB,
/// and 16 parallel downloads from 1,238-1,366 to 1,467-1,523 MiB/s (three
/// runs). The price is up to that much heap kept after a burst: the server
/// sat at 13.1-13.9 MiB after the benchmark's load, against 11.7-12.2.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tunables.contains("arena_max") {
            set(libc::M_ARENA_MAX, 1);
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none()
            && !tunables.contains("trim_threshold")
        {
            set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Free heap glibc keeps rather than trims (see [`configure`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1024 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(parameter: libc::c_int, value: libc::c_int) {
    // SAFETY: mallopt reads its two integer arguments and changes a setting
    // of glibc's allocator under glibc's own lock; it touches no memory Rust
    // owns. The parameters passed here are ones glibc defines, with values
    // in their ranges, so the call cannot misbehave, and it returns 0
    // (ignored: the default stays) if it ever refused.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(parameter, value);
    }
}
