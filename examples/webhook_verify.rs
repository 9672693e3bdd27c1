//! Run with: `cargo run --example webhook_verify [-- PORT]` (default port 3000).
//!
//! How a receiving app checks that a POST really comes from Droid. Every
//! delivery is signed the Standard Webhooks way: `webhook-id` (the
//! delivery's id), `webhook-timestamp` (unix seconds) and
//! `webhook-signature` (`v1,` and the base64 of HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"`, keyed with the tunnel's secret, printed as
//! `whsec_...`). Recompute it over the raw body bytes, compare in constant
//! time (`droid_adapters::verify` does both), and refuse old timestamps so
//! a captured request cannot be replayed later. Any Standard Webhooks
//! library does the same in one call (Python: `standardwebhooks`).
//!
//! Start it with `DROID_SECRET` set to the secret Droid printed (or the
//! `secret` of your config file), then run `droid http 3000` and send a mail
//! to the address it prints. A good POST gets 200; a forged or stale one
//! gets 401, which the sender sees as an SMTP 550.
//!
//! With `--self-test` it signs a sample body itself and checks that a good
//! signature passes and a tampered body, a wrong secret and a stale
//! timestamp fail, then exits; CI runs that.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How far `webhook-timestamp` may be from our clock.
const MAX_SKEW_SECS: u64 = 300;

/// Why a delivery is refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Stale,
    BadSignature,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The whole check: fresh timestamp, then a signature over the exact bytes.
fn verify(
    key: &[u8],
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: u64,
) -> Result<(), Refused> {
    let fresh = timestamp
        .parse::<u64>()
        .is_ok_and(|ts| ts.abs_diff(now) <= MAX_SKEW_SECS);
    if !fresh {
        return Err(Refused::Stale);
    }
    if !droid_adapters::verify(key, id, timestamp, body, signature) {
        return Err(Refused::BadSignature);
    }
    Ok(())
}

fn header<'a>(req: &'a http::request::Parts, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn handle(
    secret: Bytes,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Verify the raw bytes before parsing anything.
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return Ok(answer(StatusCode::BAD_REQUEST, "unreadable body"));
    };
    let id = header(&parts, "webhook-id");
    let result = verify(
        &secret,
        id,
        header(&parts, "webhook-timestamp"),
        &body,
        header(&parts, "webhook-signature"),
        now(),
    );
    Ok(match result {
        Ok(()) => {
            println!(
                "ok       {} {} delivery {id} ({} bytes)",
                parts.method,
                parts.uri,
                body.len()
            );
            answer(StatusCode::OK, "verified")
        }
        Err(why) => {
            println!(
                "refused  {} {} delivery {id}: {why:?}",
                parts.method, parts.uri
            );
            answer(StatusCode::UNAUTHORIZED, &format!("{why:?}"))
        }
    })
}

fn answer(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
}

/// Signs like Droid does, to show the check passes and fails when it should.
fn self_test() {
    let sign = droid_adapters::sign::sign;
    let secret = droid_adapters::Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .expect("a secret as Droid prints it");
    let (key, id, body, t) = (
        secret.key(),
        "01JD8Y2M4Q6V0X1S9T3R5W7Z2B",
        br#"{"subject":"hi"}"#.as_slice(),
        now(),
    );
    let ts = t.to_string();
    let good = sign(key, id, &ts, body);
    assert_eq!(verify(key, id, &ts, body, &good, t), Ok(()));
    assert_eq!(
        verify(key, id, &ts, b"{}", &good, t),
        Err(Refused::BadSignature)
    );
    assert_eq!(
        verify(key, "another id", &ts, body, &good, t),
        Err(Refused::BadSignature)
    );
    assert_eq!(
        verify(b"other", id, &ts, body, &good, t),
        Err(Refused::BadSignature)
    );
    let old = (t - 3600).to_string();
    let replayed = sign(key, id, &old, body);
    assert_eq!(
        verify(key, id, &old, body, &replayed, t),
        Err(Refused::Stale)
    );
    println!(
        "webhook_verify self-test: good signature accepted; tampered, wrong-key and stale ones refused"
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("--self-test") {
        self_test();
        return Ok(());
    }
    let port: u16 = arg.map(|p| p.parse()).transpose()?.unwrap_or(3000);
    let secret = std::env::var("DROID_SECRET")
        .map_err(|_| "set DROID_SECRET to the secret droid printed or was configured with")?;
    let secret = Bytes::from(droid_adapters::Secret::key_of(&secret));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "webhook_verify listening on http://{}/",
        listener.local_addr()?
    );
    loop {
        let (io, _) = listener.accept().await?;
        let secret = secret.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(secret.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
    }
}
