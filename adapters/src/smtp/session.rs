//! One SMTP session: a tokio loop over `smtp-proto`.
//!
//! Input is read into one buffer. In command mode each complete line (LF
//! ends a line, so bare-LF clients work) is parsed by
//! `smtp_proto::Request::parse`; replies are collected and written when no
//! complete command is left in the buffer, which is what PIPELINING needs.
//! A line longer than the limit is answered with `500` and the session is
//! closed at once, so the buffer never holds more than one limit plus one
//! read. In DATA mode `smtp_proto::DataReceiver` unstuffs dots and finds
//! the end; past the size limit the rest is discarded (and `552` answered),
//! and so is a message that finds the memory budget of all messages spent
//! (`452`: the sender tries again later).
//!
//! With a certificate the session offers STARTTLS (RFC 3207): after `220`
//! the connection becomes TLS, whatever the client sent after the command
//! in plain text is dropped (never read as commands inside TLS), and the
//! client starts over with EHLO.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SmtpAdapter;
use super::memory::Held;
use crate::adapter::{Conn, TlsSession};
use crate::delivery::unix_now;
use crate::mail::Envelope;
use crate::route::Route;

/// Bytes read per call.
const READ_CHUNK: usize = 64 * 1024;
/// How long, and how much, to read and drop after closing our side.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// A mail transaction: from `MAIL FROM` to the end of DATA.
struct Transaction {
    mail_from: String,
    recipients: Vec<(String, Route)>,
}

enum Mode {
    Command,
    Data {
        receiver: DataReceiver,
        message: Vec<u8>,
        /// Its share of the memory budget, held until it is delivered.
        held: Held,
    },
    /// Over the size limit, or the memory budget: the rest of DATA is
    /// read and dropped, then `reply` is answered.
    Discard {
        receiver: DummyDataReceiver,
        reply: String,
    },
}

/// What to do after a command.
enum Flow {
    Continue,
    Close,
    /// `220` was said to STARTTLS: the TLS handshake comes next.
    StartTls,
}

/// How long a client may take over the TLS handshake after STARTTLS.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One SMTP session over `io`.
pub struct Session {
    adapter: Arc<SmtpAdapter>,
    io: Conn,
    /// What its TLS agreed on, once it has TLS.
    tls: Option<TlsSession>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    input: BytesMut,
    output: Vec<u8>,
    mode: Mode,
    helo: Option<String>,
    transaction: Option<Transaction>,
    errors: usize,
    deadline: Instant,
}

impl Session {
    /// A session that has not greeted yet; `tls` when it came over TLS.
    pub fn new(
        adapter: Arc<SmtpAdapter>,
        io: Conn,
        tls: Option<TlsSession>,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> Session {
        let deadline = Instant::now() + adapter.config.session_timeout;
        Session {
            adapter,
            io,
            tls,
            peer,
            shutdown,
            input: BytesMut::with_capacity(4096),
            output: Vec::with_capacity(512),
            mode: Mode::Command,
            helo: None,
            transaction: None,
            errors: 0,
            deadline,
        }
    }

    fn reply(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let timeout = self.adapter.config.idle_timeout;
        let ok = matches!(
            tokio::time::timeout(timeout, self.io.write_all(&self.output)).await,
            Ok(Ok(()))
        );
        self.output.clear();
        ok
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        let greeting = format!("220 {} ESMTP Droid ready", self.adapter.config.hostname);
        self.reply(&greeting);
        loop {
            match self.process_input().await {
                Flow::Continue => {}
                Flow::StartTls => {
                    if !self.start_tls().await {
                        return;
                    }
                    continue;
                }
                Flow::Close => {
                    self.flush().await;
                    let _ = self.io.shutdown().await;
                    self.drain().await;
                    return;
                }
            }
            if !self.flush().await {
                return;
            }
            if self.input.capacity() - self.input.len() < 8192 {
                self.input.reserve(READ_CHUNK);
            }
            let idle = self.adapter.config.idle_timeout;
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    self.reply("421 4.3.2 Service shutting down, try again later");
                    break;
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.reply("421 4.4.2 Session too long, closing");
                    break;
                }
                read = tokio::time::timeout(idle, self.io.read_buf(&mut self.input)) => read,
            };
            match read {
                Err(_) => {
                    self.reply("421 4.4.2 Idle too long, closing");
                    break;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "read failed");
                    return;
                }
                Ok(Ok(0)) => {
                    tracing::debug!("client closed the connection");
                    return;
                }
                Ok(Ok(_)) => {}
            }
        }
        self.flush().await;
        let _ = self.io.shutdown().await;
    }

    /// Says `220`, then does the TLS handshake on the connection; `false`
    /// when it failed (the connection is then closed).
    async fn start_tls(&mut self) -> bool {
        let Some(acceptor) = self.adapter.tls.clone() else {
            return false;
        };
        self.reply("220 2.0.0 Ready to start TLS");
        if !self.flush().await {
            return false;
        }
        // RFC 3207 §4.2: nothing sent before the handshake counts.
        self.input.clear();
        let plain = std::mem::replace(&mut self.io, Box::new(tokio::io::empty()));
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                self.tls = Some(TlsSession::of(tls.get_ref().1));
                self.io = Box::new(tls);
                // §4.2: the client must say EHLO again.
                self.helo = None;
                self.transaction = None;
                true
            }
            Ok(Err(error)) => {
                tracing::info!(%error, "STARTTLS handshake failed");
                false
            }
            Err(_) => {
                tracing::info!("STARTTLS handshake took too long");
                false
            }
        }
    }

    /// After closing our side, reads and drops what the client still sends,
    /// briefly (bounded in time and bytes), so that closing does not reset
    /// the connection before the client has read our last reply.
    async fn drain(&mut self) {
        let mut scratch = vec![0u8; 16 * 1024];
        let deadline = Instant::now() + DRAIN_TIME;
        let mut drained = 0usize;
        while drained < DRAIN_BYTES {
            match tokio::time::timeout_at(deadline, self.io.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }

    /// Handles everything complete in the input buffer.
    async fn process_input(&mut self) -> Flow {
        loop {
            match &mut self.mode {
                Mode::Command => {
                    let max = self.adapter.config.max_line_length;
                    let Some(pos) = self.input.iter().position(|&b| b == b'\n') else {
                        if self.input.len() > max {
                            self.reply("500 5.5.2 Line too long, closing connection");
                            return Flow::Close;
                        }
                        return Flow::Continue;
                    };
                    let line = self.input.split_to(pos + 1).freeze();
                    if line.len() > max {
                        self.reply("500 5.5.2 Line too long, closing connection");
                        return Flow::Close;
                    }
                    match self.command(&line).await {
                        Flow::Continue => {}
                        other => return other,
                    }
                }
                Mode::Data {
                    receiver,
                    message,
                    held,
                } => {
                    let mut bytes = self.input.iter();
                    let done = receiver.ingest(&mut bytes, message);
                    let consumed = self.input.len() - bytes.as_slice().len();
                    self.input.advance(consumed);
                    let too_big = message.len() > self.adapter.config.max_message_size + 2;
                    if !too_big && !held.cover(message.capacity()) {
                        tracing::warn!(
                            size = message.len(),
                            "the memory for messages being received is spent; answering 452"
                        );
                        let reply = "452 4.3.1 Insufficient system storage; try again later";
                        self.discard(done, reply.into());
                        continue;
                    }
                    if done {
                        let Mode::Data { message, held, .. } =
                            std::mem::replace(&mut self.mode, Mode::Command)
                        else {
                            continue;
                        };
                        // The first two bytes are the CRLF fed in at DATA.
                        let raw = Bytes::from(message).slice(2..);
                        let max = self.adapter.config.max_message_size;
                        if raw.len() > max {
                            self.transaction = None;
                            tracing::info!(
                                max,
                                size = raw.len(),
                                "message over the size limit refused"
                            );
                            self.reply(&format!(
                                "552 5.3.4 Message too big (the limit is {max} bytes)"
                            ));
                            continue;
                        }
                        let reply = self.end_of_data(raw).await;
                        drop(held);
                        self.reply(&reply);
                    } else if too_big {
                        let max = self.adapter.config.max_message_size;
                        tracing::info!(max, "message over the size limit refused");
                        self.discard(
                            false,
                            format!("552 5.3.4 Message too big (the limit is {max} bytes)"),
                        );
                    } else {
                        return Flow::Continue;
                    }
                }
                Mode::Discard { receiver, .. } => {
                    let mut bytes = self.input.iter();
                    let done = receiver.ingest(&mut bytes);
                    let consumed = self.input.len() - bytes.as_slice().len();
                    self.input.advance(consumed);
                    if !done {
                        return Flow::Continue;
                    }
                    let Mode::Discard { reply, .. } =
                        std::mem::replace(&mut self.mode, Mode::Command)
                    else {
                        continue;
                    };
                    self.transaction = None;
                    self.reply(&reply);
                }
            }
        }
    }

    /// Drops the message being received: the rest of its DATA is read and
    /// dropped (none is left when it is `done`), then `reply` is answered.
    fn discard(&mut self, done: bool, reply: String) {
        let Mode::Data { receiver, .. } = std::mem::replace(&mut self.mode, Mode::Command) else {
            return;
        };
        if done {
            self.transaction = None;
            self.reply(&reply);
        } else {
            let receiver = DummyDataReceiver::new_data(&receiver);
            self.mode = Mode::Discard { receiver, reply };
        }
    }

    fn error(&mut self, line: &str) -> Flow {
        self.reply(line);
        self.errors += 1;
        if self.errors >= self.adapter.config.max_errors {
            self.reply("421 4.7.0 Too many errors, closing connection");
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(error) => {
                let reply = match error {
                    ParseError::UnknownCommand => "500 5.5.1 Command unrecognized".to_string(),
                    ParseError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
                    ParseError::InvalidSenderAddress => {
                        "501 5.1.7 Bad sender address syntax".into()
                    }
                    ParseError::InvalidRecipientAddress => {
                        "501 5.1.3 Bad recipient address syntax".into()
                    }
                    ParseError::InvalidParameter { param } => {
                        format!("501 5.5.4 Invalid parameter {param}")
                    }
                    ParseError::UnsupportedParameter { param } => {
                        let param: String = param
                            .chars()
                            .filter(|c| c.is_ascii_graphic())
                            .take(64)
                            .collect();
                        format!("555 5.5.4 Unsupported parameter {param}")
                    }
                    _ => "500 5.5.2 Syntax error".into(),
                };
                return self.error(&reply);
            }
        };
        let config = &self.adapter.config;
        match request {
            Request::Ehlo { host } => {
                self.helo = Some(host.into_owned());
                self.transaction = None;
                let starttls = if self.adapter.tls.is_some() && self.tls.is_none() {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                let lines = format!(
                    "250-{} Hello\r\n250-PIPELINING\r\n250-SIZE {}\r\n{starttls}250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES",
                    config.hostname, config.max_message_size
                );
                self.reply(&lines);
            }
            Request::Helo { host } => {
                self.helo = Some(host.into_owned());
                self.transaction = None;
                let line = format!("250 {}", config.hostname);
                self.reply(&line);
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return self.error("503 5.5.1 Send HELO/EHLO first");
                }
                if self.transaction.is_some() {
                    return self.error("503 5.5.1 Nested MAIL command");
                }
                if from.size > config.max_message_size {
                    let max = config.max_message_size;
                    return self.error(&format!(
                        "552 5.3.4 Message too big (the limit is {max} bytes)"
                    ));
                }
                if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
                    return self.error("555 5.5.4 BODY=BINARYMIME is not supported");
                }
                if from.flags & smtp_proto::MAIL_REQUIRETLS != 0 {
                    return self.error("555 5.5.4 REQUIRETLS is not supported");
                }
                self.transaction = Some(Transaction {
                    mail_from: from.address.into_owned(),
                    recipients: Vec::new(),
                });
                self.reply("250 2.1.0 Sender ok");
            }
            Request::Rcpt { to } => {
                let max_recipients = config.max_recipients;
                let Some(transaction) = self.transaction.as_mut() else {
                    return self.error("503 5.5.1 Need MAIL before RCPT");
                };
                let address = to.address.into_owned();
                if transaction
                    .recipients
                    .iter()
                    .any(|(r, _)| r.eq_ignore_ascii_case(&address))
                {
                    self.reply("250 2.1.5 Recipient ok (duplicate)");
                } else if transaction.recipients.len() >= max_recipients {
                    self.reply("452 4.5.3 Too many recipients");
                } else {
                    match self.adapter.router.resolve(&address).await {
                        Ok(Some(route)) => {
                            transaction.recipients.push((address, route));
                            self.reply("250 2.1.5 Recipient ok");
                        }
                        Err(e) => {
                            tracing::info!(recipient = %address, reason = %e, "recipient deferred");
                            self.reply(&format!("451 4.4.3 {e}; try again later"));
                        }
                        Ok(None) => {
                            self.adapter.stats.refused.inc();
                            tracing::debug!(recipient = %address, "recipient refused");
                            return self
                                .error("550 5.1.1 No such recipient here (relaying denied)");
                        }
                    }
                }
            }
            Request::Data => match &self.transaction {
                None => return self.error("503 5.5.1 Need MAIL before DATA"),
                Some(t) if t.recipients.is_empty() => {
                    return self.error("554 5.5.1 No valid recipients");
                }
                Some(_) => {
                    let mut receiver = DataReceiver::new();
                    let mut message = Vec::with_capacity(8192);
                    // Prime the receiver with a line end, so a message that is
                    // just "." ends at once and a leading ".." is unstuffed.
                    receiver.ingest(&mut b"\r\n".iter(), &mut message);
                    let held = self.adapter.memory.hold();
                    self.mode = Mode::Data {
                        receiver,
                        message,
                        held,
                    };
                    self.reply("354 End data with <CR><LF>.<CR><LF>");
                }
            },
            Request::Rset => {
                self.transaction = None;
                self.reply("250 2.0.0 Reset");
            }
            Request::Noop { .. } => self.reply("250 2.0.0 OK"),
            Request::Quit => {
                self.reply("221 2.0.0 Bye");
                return Flow::Close;
            }
            Request::Vrfy { .. } => {
                self.reply("252 2.5.0 Cannot VRFY user, but will accept message")
            }
            Request::Help { .. } => {
                self.reply("214 2.0.0 Droid SMTP: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT")
            }
            Request::StartTls if self.tls.is_some() => {
                return self.error("503 5.5.1 TLS is already on");
            }
            Request::StartTls if self.adapter.tls.is_none() => {
                return self.error("502 5.5.1 STARTTLS not available");
            }
            Request::StartTls if self.transaction.is_some() => {
                return self.error("503 5.5.1 STARTTLS in a mail transaction; RSET first");
            }
            Request::StartTls => return Flow::StartTls,
            Request::Auth { .. } => return self.error("502 5.5.1 AUTH not available"),
            Request::Bdat { .. } => {
                return self.error("502 5.5.1 BDAT not available (CHUNKING is not advertised)");
            }
            Request::Lhlo { .. } => return self.error("500 5.5.1 This is SMTP, not LMTP"),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                return self.error("502 5.5.1 Command not implemented");
            }
        }
        Flow::Continue
    }

    async fn end_of_data(&mut self, raw: Bytes) -> String {
        let Some(transaction) = self.transaction.take() else {
            return "503 5.5.1 No transaction".into();
        };
        let helo = self.helo.clone().unwrap_or_default();
        let auth = match &self.adapter.auth {
            Some(checks) => {
                let ip = self.peer.ip();
                let checked = checks.check(&raw, ip, &helo, &transaction.mail_from).await;
                if let Some(refusal) = checked.refusal {
                    self.adapter.stats.refused.inc();
                    tracing::info!(reply = %refusal, "message refused by its domain's DMARC policy");
                    return refusal;
                }
                Some(Box::new(checked.results))
            }
            None => None,
        };
        let envelope = Envelope {
            mail_from: transaction.mail_from,
            rcpt_to: Vec::new(),
            client_ip: self.peer.ip().to_string(),
            helo,
            tls: self.tls.is_some(),
            tls_session: self.tls.clone(),
            auth,
            received_at: unix_now(),
        };
        let size = raw.len();
        let recipients = transaction.recipients.len();
        let reply = super::accept::accept(
            raw,
            envelope,
            transaction.recipients,
            self.adapter.spool.as_ref(),
            self.adapter.config.deliver_timeout,
            &self.adapter.stats,
        )
        .await;
        if reply.starts_with('2') {
            self.adapter.stats.received.inc();
        } else if reply.starts_with('5') {
            self.adapter.stats.refused.inc();
        }
        tracing::info!(size, recipients, reply = %reply, "message received");
        reply
    }
}
