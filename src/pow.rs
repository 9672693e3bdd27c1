//! The one function this process would load `libm.so.6` for.
//!
//! tokio's multi-threaded scheduler calls `f64::powf` (glibc's `pow`) to
//! age its measure of task poll times, and nothing else in the process uses
//! glibc's maths library. Loading that library cost each process 330-570
//! KiB of resident memory, most of it pages the loader touched to resolve
//! the library's own symbols. Defining `pow` here, with the `libm` crate's
//! (a port of musl's), lets the linker leave `libm.so.6` out.

/// `pow(x, y)`: C99 semantics, as glibc's.
// SAFETY: `no_mangle` exports this function as the C symbol `pow`. The
// linker resolves the program's calls to `pow` to it instead of glibc's,
// and glibc's own code never calls `pow` through the program. Its
// signature is C's `double pow(double, double)`, it touches no memory, and
// it cannot unwind (`libm::pow` neither panics nor allocates), so every
// caller sees the contract it was compiled against.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    #[test]
    fn powers_are_glibcs() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(0.9, 0.0), 1.0);
        assert!((super::pow(0.1, 0.5) - 0.1f64.sqrt()).abs() < 1e-15);
        assert!(super::pow(-1.0, 0.5).is_nan());
    }
}
