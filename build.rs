//! Link options for release builds of `droid` on x86-64 Linux, where
//! rust-lld is the default linker. Both cut what a process keeps resident:
//!
//! - the functions that run are laid out first in the binary
//!   (`link/hot-functions.txt`, made by `link/profile.py`), so a process's
//!   code sits on few pages: about 2 MiB less RSS each for the server and
//!   the client. What the list no longer names (after a change to the code,
//!   the dependencies or the toolchain) is laid out as before.
//!   `DROID_NO_HOT_ORDER=1` turns it off.
//! - relative relocations are packed (`-z pack-relative-relocs`, DT_RELR):
//!   the loader reads 7 KiB of relocations instead of 379 KiB, which stayed
//!   resident, 0.3-0.9 MiB less RSS for the server. glibc reads them from
//!   2.36 on, so this is done only when the building machine's glibc is at
//!   least that: the binary runs there. `DROID_NO_PACKED_RELOCS=1` turns it
//!   off, for a binary to copy to a machine with an older glibc.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    let list = Path::new("link/hot-functions.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=DROID_NO_HOT_ORDER");
    println!("cargo:rerun-if-env-changed=DROID_NO_PACKED_RELOCS");
    if !release_linked_by_rust_lld() {
        return;
    }
    if env::var_os("DROID_NO_HOT_ORDER").is_none()
        && let Ok(dir) = env::var("CARGO_MANIFEST_DIR")
    {
        let list = Path::new(&dir).join(list);
        if list.is_file() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                list.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
    if env::var_os("DROID_NO_PACKED_RELOCS").is_none() && host_glibc_reads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// A release build for x86_64-unknown-linux-gnu with the default linker,
/// rust-lld: a linker chosen in Cargo's config (RUSTC_LINKER) or by flags
/// may not take these options.
fn release_linked_by_rust_lld() -> bool {
    env::var("PROFILE").is_ok_and(|p| p == "release")
        && env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu")
        && env::var("HOST") == env::var("TARGET")
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"))
}

/// Whether this machine's glibc is 2.36 or later (`getconf` prints
/// `glibc 2.36`), the first to read packed relocations.
fn host_glibc_reads_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 36),
        _ => false,
    }
}
