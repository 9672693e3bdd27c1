//! Run with: `cargo run --example mail_inbox [-- PORT]` (default port 3000).
//!
//! A tiny local app that prints each mail Droid delivers to it: sender,
//! recipients, subject, text and attachment names. Start it, then
//! `droid http 3000` (or `droid smtp --listen 127.0.0.1:2525 --post
//! http://localhost:3000/`) and send a mail to the SMTP address Droid
//! prints, e.g. with `swaks --server 127.0.0.1:2525 --to me@example.com`.
//!
//! With `DROID_SECRET` set (the secret Droid printed or was configured
//! with), it checks `webhook-signature` and refuses a POST whose signature is
//! wrong or whose `webhook-timestamp` is more than five minutes off: the 401
//! reaches the sender as an SMTP 550.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

const MAX_SKEW_SECS: u64 = 300;

fn header<'a>(req: &'a http::request::Parts, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Checks the signature when DROID_SECRET is set; `Err` says why not.
fn check_signature(parts: &http::request::Parts, body: &[u8]) -> Result<&'static str, String> {
    let Ok(secret) = std::env::var("DROID_SECRET") else {
        return Ok("not checked (DROID_SECRET unset)");
    };
    let id = header(parts, "webhook-id");
    let timestamp = header(parts, "webhook-timestamp");
    let signature = header(parts, "webhook-signature");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fresh = timestamp
        .parse::<u64>()
        .is_ok_and(|ts| ts.abs_diff(now) <= MAX_SKEW_SECS);
    if !fresh {
        return Err(format!("stale or missing webhook-timestamp {timestamp:?}"));
    }
    let key = droid_adapters::Secret::key_of(&secret);
    if !droid_adapters::verify(&key, id, timestamp, body, signature) {
        return Err("bad webhook-signature".into());
    }
    Ok("ok")
}

fn addresses(list: &Value) -> String {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|m| match (m["name"].as_str(), m["address"].as_str()) {
                    (Some(n), Some(a)) => format!("{n} <{a}>"),
                    (None, Some(a)) => a.to_string(),
                    (Some(n), None) => n.to_string(),
                    (None, None) => String::new(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_mail(parts: &http::request::Parts, body: &[u8], signature: &str) {
    println!("──── {} {} ({} bytes)", parts.method, parts.uri, body.len());
    println!("delivery  {}", header(parts, "webhook-id"));
    println!("signature {signature}");
    let content_type = header(parts, "content-type");
    if !content_type.starts_with("application/json") {
        println!("format    {content_type} (use --format json for the parsed fields)");
        return;
    }
    let mail: Value = match serde_json::from_slice(body) {
        Ok(mail) => mail,
        Err(e) => {
            println!("not JSON: {e}");
            return;
        }
    };
    println!("from      {}", addresses(&mail["from"]));
    println!("to        {}", addresses(&mail["to"]));
    println!(
        "envelope  {} -> {}",
        mail["envelope"]["mail_from"], mail["envelope"]["rcpt_to"]
    );
    println!("subject   {}", mail["subject"].as_str().unwrap_or("(none)"));
    if let Some(reply) = mail["reply_text"].as_str() {
        println!("reply     {}", reply.replace('\n', "\n          "));
    }
    if let Some(text) = mail["text"].as_str() {
        println!(
            "text      {}",
            text.trim_end().replace('\n', "\n          ")
        );
    }
    for a in mail["attachments"].as_array().into_iter().flatten() {
        println!(
            "attached  {} ({}, {} bytes{})",
            a["filename"].as_str().unwrap_or("(no name)"),
            a["content_type"].as_str().unwrap_or("?"),
            a["size"],
            if a["inline"].as_bool() == Some(true) {
                ", inline"
            } else {
                ""
            }
        );
    }
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    match check_signature(&parts, &body) {
        Ok(state) => {
            print_mail(&parts, &body, state);
            Ok(answer(StatusCode::OK, "thanks"))
        }
        Err(why) => {
            println!("──── refused a POST: {why}");
            Ok(answer(StatusCode::UNAUTHORIZED, &why))
        }
    }
}

fn answer(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("mail_inbox listening on http://{}/", listener.local_addr()?);
    loop {
        let (io, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service_fn(handle))
                .await;
        });
    }
}
