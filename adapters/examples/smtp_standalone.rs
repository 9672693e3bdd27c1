//! Run with: `cargo run -p droid-adapters --example smtp_standalone -- 127.0.0.1:2525 http://127.0.0.1:3000/ [SPOOL_DIR]`
//!
//! The standalone SMTP adapter wired by hand: what `droid smtp --listen ...
//! --post ...` does, minus argument parsing. Mail to any recipient is
//! POSTed as JSON to the URL, signed with the secret in `DROID_SECRET`
//! (empty if unset); what the app cannot take goes to the spool.

use std::sync::Arc;

use droid_adapters::{
    ConnLimits, MailOptions, SmtpAdapter, SmtpConfig, Spool, SpoolConfig, UrlRouter, UrlSink,
    bind_listener, run_adapter,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:2525".into())
        .parse()?;
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:3000/".into());
    let spool_dir = args.next();

    let sink = UrlSink::new(&url)?;
    let options = MailOptions {
        path: sink.path().to_string(),
        secret: std::env::var("DROID_SECRET")
            .unwrap_or_default()
            .into_bytes(),
        ..MailOptions::default()
    };
    let router = Arc::new(UrlRouter::new(Arc::new(sink), url.clone(), options, None));
    let shutdown = CancellationToken::new();
    let spool = match spool_dir {
        Some(dir) => {
            let spool = Spool::open(dir, SpoolConfig::default())?;
            tokio::spawn(spool.clone().run(router.clone(), shutdown.clone()));
            Some(spool)
        }
        None => None,
    };
    let adapter = Arc::new(SmtpAdapter::new(SmtpConfig::default(), router, spool));
    let listener = bind_listener(listen).await?;
    println!("smtp {}, posting to {url}", listener.local_addr()?);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    run_adapter([listener.into()], adapter, ConnLimits::default(), shutdown).await;
    Ok(())
}
