//! Release builds of `droid` on x86-64 Linux lay out the functions that run
//! first in the binary (`link/hot-functions.txt`, made by `link/profile.py`),
//! so a process's code sits on few pages. The server's and client's RSS
//! falls by about 2 MiB each; what the list no longer names (after a
//! dependency or toolchain update) is laid out as before.

use std::env;
use std::path::Path;

fn main() {
    let list = Path::new("link/hot-functions.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=DROID_NO_HOT_ORDER");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    // rust-lld, the default linker there, takes the list; a linker chosen
    // in Cargo's config (RUSTC_LINKER) or by flags may not.
    let default_linker = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu")
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    if !release || !default_linker || env::var_os("DROID_NO_HOT_ORDER").is_some() {
        return;
    }
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = Path::new(&dir).join(list);
    if list.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
