//! HTTP/1 as the server's front speaks it: each request's head parsed once
//! (`request`), the app's answer read only for its status and framing
//! (`answer`, `chunked`) and relayed as bytes (`relay`), and the pages the
//! server answers itself (`page`).

pub(crate) mod answer;
pub(crate) mod chunked;
pub(crate) mod page;
pub(crate) mod relay;
pub(crate) mod request;
