//! Shared by the fuzz targets.

use std::future::Future;
use std::sync::OnceLock;

/// Runs `future` to completion on one current-thread runtime, built once.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a tokio runtime")
        })
        .block_on(future)
}
