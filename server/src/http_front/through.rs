//! A request on its way through a tunnel (or another node's): the checks
//! that need the tunnel, the upstream kept or opened, the exchange relayed,
//! and what is left to count and log.

use super::*;

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Checks a request for a tunnel this node holds, then relays it; every
    /// outcome, refusals included, makes the tunnel's request line.
    pub(super) async fn through_tunnel(
        &mut self,
        tunnel: Arc<Tunnel>,
        head: RequestHead,
        host: String,
    ) -> Next {
        let started = Instant::now();
        let declared = match head.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let checked = (self.visitor).check(&tunnel, head.authorization(), declared, head.html);
        let (next, status) = match checked {
            Err(page) => {
                let status = page.status.as_u16();
                let through = Some(started.elapsed());
                (self.refuse(page, &head, through).await, status)
            }
            Ok(()) => self.relay_checked(&tunnel, &head, &host, started).await,
        };
        let elapsed = started.elapsed();
        let (name, method) = (&tunnel.name, head.method.as_str());
        debug!(tunnel = %name, %method, path = head.target(), status, ?elapsed, "forwarded");
        tunnel
            .log
            .record(name, method, head.target(), status, elapsed);
        next
    }

    /// Relays a checked request through `tunnel`: over this connection's
    /// stream to it, or a new one. Returns what the connection does next
    /// and the status the visitor got.
    async fn relay_checked(
        &mut self,
        tunnel: &Arc<Tunnel>,
        head: &RequestHead,
        host: &str,
        started: Instant,
    ) -> (Next, u16) {
        let name = &tunnel.name;
        let mut first = Vec::new();
        let kept = self.take_upstream(|d| matches!(d, Dest::Tunnel(t) if Arc::ptr_eq(t, tunnel)));
        let mut upstream = match kept {
            Some(upstream) => upstream,
            None => match self.visitor.open_stream(tunnel, head, &mut first).await {
                Ok(upstream) => upstream,
                Err(page) => {
                    let status = page.status.as_u16();
                    let through = Some(started.elapsed());
                    return (self.refuse(page, head, through).await, status);
                }
            },
        };
        let app_host = tunnel.host_header.as_ref().map(|h| h.as_bytes());
        head.write_forwarded(
            &mut first,
            &Forwarding {
                visitor_ip: &self.visitor.peer_ip,
                https: self.visitor.https,
                host,
                app_host,
                strip_authorization: tunnel.access.has_auth(),
            },
        );
        let max_body = self.visitor.shared.config.max_body_size;
        let relayed = self.relay(&mut upstream, first, head, max_body, true).await;
        let failed = |_: &Visitor, e: &AnswerError| {
            if tunnel.opener.is_ended() {
                info!(tunnel = %name, error = %e, "request failed inside the tunnel");
                Page::new(
                    StatusCode::BAD_GATEWAY,
                    OwnAnswer::TunnelGone,
                    &format!("the tunnel {name} went away while forwarding the request"),
                    head.html,
                )
            } else {
                // The client closes the stream when the app closes its
                // connection: the app hung up without answering.
                debug!(tunnel = %name, error = %e, "the app closed the connection");
                Page::new(
                    StatusCode::BAD_GATEWAY,
                    OwnAnswer::AppClosed,
                    &format!(
                        "the local app of the tunnel {name} closed the connection without an answer"
                    ),
                    head.html,
                )
            }
        };
        self.finish(relayed, upstream, head, started, true, failed)
            .await
    }

    /// Relays a request for a tunnel another node holds to that node, at
    /// its peer address `addr`, as the visitor sent it: that node checks
    /// and rewrites it as its own front would.
    pub(super) async fn through_node(
        &mut self,
        head: RequestHead,
        name: String,
        addr: String,
    ) -> Next {
        let started = Instant::now();
        let kept = self.take_upstream(|d| matches!(d, Dest::Node { addr: a, .. } if *a == addr));
        let dest = Dest::Node {
            name: name.clone(),
            addr: addr.clone(),
        };
        let mut upstream = match kept {
            Some(mut upstream) => {
                upstream.dest = dest;
                upstream
            }
            None => match self.visitor.open_node(&addr).await {
                Some(link) => Upstream::new(dest, Box::new(link)),
                None => {
                    // The node it pointed to failed: ask Redis next time.
                    if let Some(cluster) = self.visitor.shared.cluster.get() {
                        cluster.forget(&name);
                    }
                    let page = self.visitor.unreachable(&name, head.html);
                    return self.refuse(page, &head, None).await;
                }
            },
        };
        let relayed = self
            .relay(&mut upstream, head.raw().to_vec(), &head, None, false)
            .await;
        // A node that no longer holds the tunnel (it moved) is not asked
        // again: the next request asks Redis.
        let moved = match &relayed {
            Relayed::Answered { answer, .. } => matches!(answer.status, 404 | 502),
            Relayed::Failed(_) => true,
            _ => false,
        };
        if moved && let Some(cluster) = self.visitor.shared.cluster.get() {
            cluster.forget(&name);
        }
        if let Relayed::Failed(e) = &relayed {
            info!(tunnel = %name, node = %addr, error = %e, "a request forwarded to another node failed");
        }
        let html = head.html;
        let failed = |visitor: &Visitor, _: &AnswerError| visitor.unreachable(&name, html);
        let (next, _) = self
            .finish(relayed, upstream, &head, started, !moved, failed)
            .await;
        next
    }

    /// Counts and closes an exchange: the answer relayed (the upstream kept
    /// for the next request when `keep` and both sides allow), or a page
    /// in its place. Returns what the connection does next and the status
    /// the visitor got.
    async fn finish(
        &mut self,
        relayed: Relayed,
        upstream: Upstream,
        head: &RequestHead,
        started: Instant,
        keep: bool,
        failed: impl FnOnce(&Visitor, &AnswerError) -> Page,
    ) -> (Next, u16) {
        let metrics = &self.visitor.shared.metrics;
        let tunnel = matches!(upstream.dest, Dest::Tunnel(_));
        let took = |at: Instant| tunnel.then(|| at.saturating_duration_since(started));
        match relayed {
            Relayed::Answered { answer, body_done } => {
                metrics.answered(answer.status, None, took(answer.head_at));
                if answer.upgraded {
                    // An upgrade answered before the request's body was all
                    // sent cannot be spliced: where the body ends is lost.
                    let next = if body_done {
                        Next::Upgraded(upstream)
                    } else {
                        Next::Close
                    };
                    return (next, answer.status);
                }
                let reusable = answer.keep_alive && body_done && !head.close;
                if keep && reusable && upstream.from.buf.is_empty() {
                    self.upstream = Some(upstream);
                }
                let next = if reusable {
                    Next::Continue
                } else {
                    Next::Close
                };
                (next, answer.status)
            }
            Relayed::Refused(page) => {
                let status = page.status.as_u16();
                (
                    self.answer(page.closing(), Some(head), took(Instant::now()))
                        .await,
                    status,
                )
            }
            Relayed::Failed(e) => {
                let page = failed(&self.visitor, &e);
                let status = page.status.as_u16();
                (self.refuse(page, head, took(Instant::now())).await, status)
            }
            Relayed::Broken(status) => (Next::Close, status),
        }
    }

    /// Relays one request over `upstream`: `first` (the head as it goes,
    /// after any stream header) with as much of the body as has arrived,
    /// then the rest of the body while the answer comes back. `continues`:
    /// this node answers `Expect: 100-continue` (else the next hop does).
    async fn relay(
        &mut self,
        upstream: &mut Upstream,
        mut first: Vec<u8>,
        head: &RequestHead,
        max_body: Option<u64>,
        continues: bool,
    ) -> Relayed {
        let mut body = Body::new(head.framing, max_body);
        let n = match body.take(&self.from.buf) {
            Ok(n) => n,
            Err(e) => return Relayed::Refused(body_page(&e, head.html)),
        };
        first.extend_from_slice(&self.from.buf[..n]);
        self.from.buf.advance(n);
        if upstream.to.write_all(&first).await.is_err() {
            return Relayed::Failed(AnswerError::Closed);
        }
        drop(first);
        if head.expect_continue && continues && self.from.buf.is_empty() {
            // The body is wanted now: said as a server would (the app
            // hears no `Expect`).
            let sent = self.to.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            if sent.is_err() || self.to.flush().await.is_err() {
                return Relayed::Broken(0);
            }
        }
        let idle = self.visitor.shared.config.body_read_timeout;
        let to_head = head.method == Method::HEAD;
        let started = AtomicU16::new(0);
        let Upstream {
            from: app,
            to: to_app,
            ..
        } = upstream;
        let (from, to) = (&mut self.from, &mut self.to);
        let recv = relay::relay_answer(app, to, to_head, !head.http10, &started);
        tokio::pin!(recv);
        let gone = || Relayed::Broken(started.load(Ordering::Relaxed));
        // The body goes while the answer may already be coming...
        let early = {
            let send = relay::send_body(&mut body, from, to_app, idle);
            tokio::pin!(send);
            tokio::select! {
                biased;
                sent = &mut send => match sent {
                    Ok(()) | Err(BodyError::UpstreamGone) => None,
                    Err(BodyError::VisitorGone) => return gone(),
                    Err(e) => {
                        return match started.load(Ordering::Relaxed) {
                            0 => Relayed::Refused(body_page(&e, head.html)),
                            status => Relayed::Broken(status),
                        };
                    }
                },
                answered = &mut recv => Some(answered),
            }
        };
        let body_sent = early.is_none();
        // ...then the visitor is watched while it waits: one that leaves
        // frees the stream, and the app's connection is closed.
        let answered = match early {
            Some(answered) => answered,
            None => loop {
                let watching = from.buf.is_empty();
                tokio::select! {
                    biased;
                    answered = &mut recv => break answered,
                    read = from.fill(), if watching => match read {
                        Ok(0) | Err(_) => return gone(),
                        // The next request, pipelined: kept for its turn.
                        Ok(_) => {}
                    },
                }
            },
        };
        let body_done = body_sent && body.done();
        match answered {
            Ok(answer) => Relayed::Answered { answer, body_done },
            Err(e) => match started.load(Ordering::Relaxed) {
                0 => Relayed::Failed(e),
                status => Relayed::Broken(status),
            },
        }
    }

    /// The connection's kept upstream, if `wanted` and still open.
    fn take_upstream(&mut self, wanted: impl Fn(&Dest) -> bool) -> Option<Upstream> {
        let mut upstream = self.upstream.take()?;
        (wanted(&upstream.dest) && upstream.from.idle_and_open()).then_some(upstream)
    }
}

impl Visitor {
    /// The tunnel's own checks (who may reach it, body size, rate), in
    /// that order: a request refused for another reason does not use up
    /// the tunnel's rate. `declared`: the body's length, when the request
    /// says it.
    pub(super) fn check(
        &self,
        tunnel: &Tunnel,
        authorization: Option<&[u8]>,
        declared: Option<u64>,
        html: bool,
    ) -> Result<(), Page> {
        let name = &tunnel.name;
        let ip = self.peer.ip();
        let page = |status, why, reason: &str| Page::new(status, why, reason, html);
        match tunnel.access.check(ip, authorization) {
            Verdict::Pass => {}
            Verdict::Forbidden => {
                return Err(page(
                    StatusCode::FORBIDDEN,
                    OwnAnswer::Forbidden,
                    &format!("the tunnel {name} does not accept visitors from {ip}"),
                ));
            }
            Verdict::Unauthorized => {
                let page = page(
                    StatusCode::UNAUTHORIZED,
                    OwnAnswer::Unauthorized,
                    &format!("the tunnel {name} asks for a user name and password"),
                );
                let realm = format!("Basic realm=\"{name}\", charset=\"UTF-8\"");
                return Err(page.with("www-authenticate", realm));
            }
        }
        if let Some(max) = self.shared.config.max_body_size
            && declared.is_some_and(|n| n > max)
        {
            return Err(too_large(max, html));
        }
        if let Some(rate) = &tunnel.rate
            && let Err(wait) = rate.check()
        {
            debug!(tunnel = %name, ?wait, "request rate limit reached");
            let page = page(
                StatusCode::TOO_MANY_REQUESTS,
                OwnAnswer::RateLimited,
                &format!("the tunnel {name} gets more requests than this server allows; slow down"),
            );
            return Err(page.with("retry-after", rate::retry_after_secs(wait).to_string()));
        }
        Ok(())
    }

    /// The page for a request the node holding its tunnel did not answer.
    pub(super) fn unreachable(&self, name: &str, html: bool) -> Page {
        Page::new(
            StatusCode::BAD_GATEWAY,
            OwnAnswer::TunnelGone,
            &format!("the server holding the tunnel {name} did not answer; try again"),
            html,
        )
    }

    /// A new stream through `tunnel`; its header goes first in `first`.
    async fn open_stream(
        &self,
        tunnel: &Arc<Tunnel>,
        head: &RequestHead,
        first: &mut Vec<u8>,
    ) -> Result<Upstream, Page> {
        let stream = self.open_tunnel_stream(tunnel, head.html, false).await?;
        let header = StreamHeader::Http {
            tunnel: tunnel.name.clone(),
            remote: self.peer.to_string(),
        };
        first.extend_from_slice(&protocol::encode_line(&header));
        Ok(Upstream::new(
            Dest::Tunnel(tunnel.clone()),
            Box::new(stream),
        ))
    }

    /// A new stream through `tunnel`, within the stream-open time, or the
    /// page that says why there is none. A `carrier` stream takes no place
    /// under the session's stream limit: its requests each take one.
    pub(super) async fn open_tunnel_stream(
        &self,
        tunnel: &Tunnel,
        html: bool,
        carrier: bool,
    ) -> Result<droid_core::session::Stream, Page> {
        let name = &tunnel.name;
        let timeout = self.shared.config.stream_open_timeout;
        let opening = async {
            if carrier {
                tunnel.opener.open_carrier().await
            } else {
                tunnel.opener.open().await
            }
        };
        match tokio::time::timeout(timeout, opening).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(_)) => Err(Page::new(
                StatusCode::BAD_GATEWAY,
                OwnAnswer::TunnelGone,
                &format!("the tunnel {name} disconnected"),
                html,
            )),
            Err(_) => Err(Page::new(
                StatusCode::SERVICE_UNAVAILABLE,
                OwnAnswer::StreamLimit,
                &format!("the tunnel {name} has too many requests in flight; try again"),
                html,
            )),
        }
    }

    /// A connection to another node's peer port, for this visitor.
    pub(super) async fn open_node(&self, node: &str) -> Option<impl Link + 'static> {
        let shared = &self.shared;
        let cluster = shared.cluster.get()?;
        let mode = if self.https {
            crate::peer::Mode::Https
        } else {
            crate::peer::Mode::Http
        };
        let timeout = shared.config.stream_open_timeout;
        let from = Some(self.peer);
        match crate::peer::open(cluster, node, from, mode, timeout).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                info!(%node, error = %e, "could not open a link to another node");
                None
            }
        }
    }
}

/// The page for a request body that broke a limit or its framing.
fn body_page(error: &BodyError, html: bool) -> Page {
    match error {
        BodyError::TooLarge(max) => too_large(*max, html),
        BodyError::TooSlow => Page::new(
            StatusCode::REQUEST_TIMEOUT,
            OwnAnswer::BodyTimeout,
            "the request body stopped arriving",
            html,
        ),
        _ => {
            debug!(error = %error, "malformed request body");
            Page::new(
                StatusCode::BAD_REQUEST,
                OwnAnswer::BadRequest,
                "the request body is malformed",
                html,
            )
        }
    }
}

/// A 413 that closes the connection: the rest of the body is not read.
pub(super) fn too_large(max: u64, html: bool) -> Page {
    Page::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        OwnAnswer::TooLarge,
        &format!("the request body is larger than this server accepts ({max} bytes)"),
        html,
    )
    .closing()
}
