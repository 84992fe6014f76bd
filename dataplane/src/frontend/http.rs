//! HTTP/1.1 request heads: parsing, bearer-token extraction, the WebSocket
//! upgrade handshake (RFC 6455 §4.2) and response building.
//!
//! Sans-IO: [`parse_request`] takes the bytes received so far and says how
//! long the head is; the caller reads the body (if any, `Content-Length`
//! bytes) and writes the response bytes built here. This is the handshake
//! and HTTP-ingestion path, not the per-envelope hot path, so the parsed
//! head owns small `String`s.
//!
//! Decisions worth knowing:
//! - A head must end within [`MAX_HEAD_LEN`] bytes and carry at most
//!   [`MAX_HEADERS`] header fields (431 otherwise).
//! - Bodies are delimited by `Content-Length` only. `Transfer-Encoding:
//!   chunked` is answered with **411 Length Required** (the client can retry
//!   with a length; every client we care about can), other transfer codings
//!   with 501, and a request carrying both `Transfer-Encoding` and
//!   `Content-Length` with 400 (a request-smuggling pattern). Duplicate
//!   `Content-Length`, `Host`, `Authorization` or `Sec-WebSocket-Key` fields
//!   are 400 too.
//! - `Expect: 100-continue` is reported ([`RequestHead::expect_continue`]);
//!   the server answers [`CONTINUE_RESPONSE`] before reading the body. Any
//!   other expectation is 417.
//! - Tokens never reach `Debug` output: [`RequestHead`] and [`BearerToken`]
//!   redact them (docs/protocol.md §2: the server never logs tokens).
//! - permessage-deflate and every other WebSocket extension offer is
//!   ignored; the 101 response never accepts one.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use switchboard_protocol::frame::FRAME_HEADER_LEN;
use switchboard_protocol::limits::MAX_ENVELOPE_LEN_CEILING;
use switchboard_protocol::{EnvelopeId, ErrorCode, Outcome};

/// Longest request head accepted, request line and headers included.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Most header fields accepted in one request head.
pub const MAX_HEADERS: usize = 32;
/// Largest `Content-Length` accepted at parse time: a frame around an
/// envelope of the configurable ceiling. The server compares the length with
/// its configured envelope limit itself.
pub const MAX_CONTENT_LENGTH: u64 = (MAX_ENVELOPE_LEN_CEILING + FRAME_HEADER_LEN) as u64;
/// The WebSocket subprotocol of protocol version 1.
pub const SUBPROTOCOL: &str = "switchboard.v1";
/// Prefix of the `Sec-WebSocket-Protocol` value that carries a token.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";
/// The interim response to `Expect: 100-continue`.
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The only WebSocket version there is (RFC 6455 §4.1).
const WEBSOCKET_VERSION: &str = "13";

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet, read more. `Ok(Some((head,
/// len)))`: the head occupies `buf[..len]`; a body, if any, follows. Errors
/// carry the status to answer with ([`HttpError::response`]); the caller
/// should then close the connection.
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD_LEN)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(HttpError::Malformed(httparse_reason(e))),
    };
    // A complete parse fills method, path and version.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line"));
    };
    let version = match version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(HttpError::Malformed("unsupported HTTP version")),
    };
    let (path, query) = split_target(method, target)?;
    let mut head = RequestHead {
        method: Method::from_token(method),
        version,
        path: path.to_owned(),
        query: query.map(str::to_owned),
        host: None,
        upgrade: Vec::new(),
        connection: Vec::new(),
        sec_websocket_key: None,
        sec_websocket_version: None,
        sec_websocket_protocol: Vec::new(),
        authorization: None,
        content_length: None,
        content_type: None,
        expect_continue: false,
    };
    let mut transfer_encoding: Option<String> = None;
    for header in req.headers.iter() {
        let name = header.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            set_once(&mut head.host, "host", header.value)?;
        } else if is("upgrade") {
            push_tokens(&mut head.upgrade, "upgrade", header.value, true)?;
        } else if is("connection") {
            push_tokens(&mut head.connection, "connection", header.value, true)?;
        } else if is("sec-websocket-key") {
            set_once(&mut head.sec_websocket_key, "sec-websocket-key", header.value)?;
        } else if is("sec-websocket-version") {
            set_once(&mut head.sec_websocket_version, "sec-websocket-version", header.value)?;
        } else if is("sec-websocket-protocol") {
            push_tokens(&mut head.sec_websocket_protocol, "sec-websocket-protocol", header.value, false)?;
        } else if is("authorization") {
            set_once(&mut head.authorization, "authorization", header.value)?;
        } else if is("content-length") {
            if head.content_length.is_some() {
                return Err(HttpError::DuplicateHeader("content-length"));
            }
            head.content_length = Some(parse_content_length(header.value)?);
        } else if is("content-type") {
            set_once(&mut head.content_type, "content-type", header.value)?;
        } else if is("transfer-encoding") {
            let value = header_str("transfer-encoding", header.value)?;
            match &mut transfer_encoding {
                Some(te) => {
                    te.push_str(", ");
                    te.push_str(value);
                }
                None => transfer_encoding = Some(value.to_owned()),
            }
        } else if is("expect") {
            if header_str("expect", header.value)?.eq_ignore_ascii_case("100-continue") {
                head.expect_continue = true;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        }
    }
    if let Some(te) = transfer_encoding {
        return Err(transfer_encoding_error(&te, head.content_length.is_some(), version));
    }
    if version == Version::Http11 && head.host.is_none() {
        return Err(HttpError::MissingHeader("host"));
    }
    Ok(Some((head, head_len)))
}

/// A parsed request head: what the server needs from it, owned.
///
/// Header-derived token lists are lowercased where their comparison is
/// case-insensitive (`Upgrade`, `Connection`) and kept as sent where it is
/// not (`Sec-WebSocket-Protocol`). `Debug` redacts tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    method: Method,
    version: Version,
    path: String,
    query: Option<String>,
    host: Option<String>,
    upgrade: Vec<String>,
    connection: Vec<String>,
    sec_websocket_key: Option<String>,
    sec_websocket_version: Option<String>,
    sec_websocket_protocol: Vec<String>,
    authorization: Option<String>,
    content_length: Option<u64>,
    content_type: Option<String>,
    expect_continue: bool,
}

impl RequestHead {
    /// The request method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The path, without the query string, as sent (not percent-decoded).
    /// An absolute-form target (`http://host/path`) is reduced to its path;
    /// `OPTIONS *` gives `*`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string after `?`, if any (not percent-decoded). May
    /// contain a token: never log it.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The `Host` header (required, and present, for HTTP/1.1).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The `Upgrade` protocols offered, lowercased.
    pub fn upgrade(&self) -> &[String] {
        &self.upgrade
    }

    /// The `Connection` options, lowercased.
    pub fn connection(&self) -> &[String] {
        &self.connection
    }

    /// The `Sec-WebSocket-Key` header, as sent.
    pub fn sec_websocket_key(&self) -> Option<&str> {
        self.sec_websocket_key.as_deref()
    }

    /// The `Sec-WebSocket-Version` header, as sent.
    pub fn sec_websocket_version(&self) -> Option<&str> {
        self.sec_websocket_version.as_deref()
    }

    /// The `Sec-WebSocket-Protocol` values offered, in order, as sent. May
    /// contain a `bearer.<jwt>` value: never log it.
    pub fn sec_websocket_protocol(&self) -> &[String] {
        &self.sec_websocket_protocol
    }

    /// The `Authorization` header. Never log it.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// The body length announced by `Content-Length`, at most
    /// [`MAX_CONTENT_LENGTH`]. `None` means no body (there is no chunked
    /// body: [`parse_request`] refuses `Transfer-Encoding`).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The `Content-Type` header, as sent.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// True if the client sent `Expect: 100-continue` and waits for
    /// [`CONTINUE_RESPONSE`] before sending its body.
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    /// True if the connection may stay open after the response: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection:
    /// keep-alive`.
    pub fn keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.has_connection_option("close"),
            Version::Http10 => self.has_connection_option("keep-alive"),
        }
    }

    /// True if `Connection` lists `option` (compared case-insensitively).
    pub fn has_connection_option(&self, option: &str) -> bool {
        self.connection.iter().any(|o| o.eq_ignore_ascii_case(option))
    }

    /// True if the client asks for a WebSocket upgrade (`Upgrade: websocket`),
    /// valid or not; [`validate_websocket_upgrade`] checks the rest.
    pub fn wants_websocket(&self) -> bool {
        self.upgrade.iter().any(|p| p == "websocket")
    }

    /// The bearer token, looked up in the order of docs/protocol.md §2:
    /// `Authorization: Bearer <jwt>` (scheme case-insensitive; other schemes
    /// are ignored), else the `token` query parameter (percent-decoded),
    /// else a `bearer.<jwt>` `Sec-WebSocket-Protocol` value.
    ///
    /// `Ok(None)`: no token was presented (`unauthenticated`). An error: a
    /// token was presented but cannot be a JWT (empty, duplicated, bad
    /// percent-encoding), answered as `invalid-token`. The token's content
    /// is not checked here; that is the authenticator's job.
    pub fn bearer_token(&self) -> Result<Option<BearerToken<'_>>, HttpError> {
        if let Some(jwt) = self.authorization.as_deref().map(bearer_credentials).transpose()?.flatten() {
            return Ok(Some(BearerToken { jwt: Cow::Borrowed(jwt), source: TokenSource::Authorization }));
        }
        if let Some(jwt) = self.query.as_deref().map(query_token).transpose()?.flatten() {
            return Ok(Some(BearerToken { jwt, source: TokenSource::Query }));
        }
        let mut offered = self.sec_websocket_protocol.iter().filter_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL_PREFIX));
        if let Some(jwt) = offered.next() {
            if offered.next().is_some() {
                return Err(HttpError::MalformedToken("more than one bearer subprotocol"));
            }
            check_token_chars(jwt)?;
            return Ok(Some(BearerToken { jwt: Cow::Borrowed(jwt), source: TokenSource::Subprotocol }));
        }
        Ok(None)
    }
}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocols: Vec<&str> = self
            .sec_websocket_protocol
            .iter()
            .map(|p| if p.starts_with(BEARER_SUBPROTOCOL_PREFIX) { "bearer.<redacted>" } else { p.as_str() })
            .collect();
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("version", &self.version)
            .field("path", &self.path)
            .field("query", &self.query.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("upgrade", &self.upgrade)
            .field("connection", &self.connection)
            .field("sec_websocket_key", &self.sec_websocket_key)
            .field("sec_websocket_version", &self.sec_websocket_version)
            .field("sec_websocket_protocol", &protocols)
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("content_length", &self.content_length)
            .field("content_type", &self.content_type)
            .field("expect_continue", &self.expect_continue)
            .finish()
    }
}

/// Request methods. Methods the server has no route for parse as
/// [`Method::Other`] and get 405 from the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
    /// `PATCH`
    Patch,
    /// Any other (syntactically valid) method.
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1).
    fn from_token(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }
}

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// Where a bearer token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenSource {
    /// `Authorization: Bearer <jwt>`.
    Authorization,
    /// The `token` query parameter.
    Query,
    /// A `bearer.<jwt>` value of `Sec-WebSocket-Protocol`.
    Subprotocol,
}

impl TokenSource {
    /// Stable kebab-case name, for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Authorization => "authorization",
            Self::Query => "query",
            Self::Subprotocol => "subprotocol",
        }
    }
}

/// A bearer token taken from a request: the JWT text and where it was.
/// `Debug` prints the source only.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken<'a> {
    jwt: Cow<'a, str>,
    source: TokenSource,
}

impl BearerToken<'_> {
    /// The token text (a JWT if the client is well-behaved). Never log it.
    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    /// Where the token was found.
    pub fn source(&self) -> TokenSource {
        self.source
    }
}

impl fmt::Debug for BearerToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken").field("jwt", &"<redacted>").field("source", &self.source).finish()
    }
}

/// Checks a WebSocket upgrade request (RFC 6455 §4.2.1) and prepares the
/// answer. Call it before authenticating, so a bad upgrade gets 400/426 and
/// an unauthenticated one 401; then write [`WebSocketUpgrade::response`].
///
/// Requires `GET`, HTTP/1.1, `Upgrade: websocket`, `Connection: upgrade`,
/// `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` that is the base64
/// of 16 bytes. If the client offers subprotocols other than `bearer.*`,
/// one of them must be [`SUBPROTOCOL`] (else `unsupported-version`, 400).
pub fn validate_websocket_upgrade(head: &RequestHead) -> Result<WebSocketUpgrade, HttpError> {
    if head.method != Method::Get {
        return Err(HttpError::MethodNotAllowed { allow: "GET" });
    }
    if head.version != Version::Http11 {
        return Err(HttpError::Malformed("a WebSocket upgrade needs HTTP/1.1"));
    }
    if !head.wants_websocket() {
        return Err(HttpError::UpgradeRequired);
    }
    if !head.has_connection_option("upgrade") {
        return Err(HttpError::Malformed("a WebSocket upgrade needs `Connection: upgrade`"));
    }
    match head.sec_websocket_version.as_deref() {
        Some(WEBSOCKET_VERSION) => {}
        Some(_) => return Err(HttpError::UnsupportedWebSocketVersion),
        None => return Err(HttpError::MissingHeader("sec-websocket-version")),
    }
    let key = head.sec_websocket_key.as_deref().ok_or(HttpError::MissingHeader("sec-websocket-key"))?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(HttpError::InvalidHeader("sec-websocket-key")),
    }
    let mut offered = head.sec_websocket_protocol.iter().filter(|p| !p.starts_with(BEARER_SUBPROTOCOL_PREFIX));
    let subprotocol = if head.sec_websocket_protocol.iter().any(|p| p == SUBPROTOCOL) {
        Some(SUBPROTOCOL)
    } else if offered.next().is_some() {
        return Err(HttpError::UnsupportedSubprotocol);
    } else {
        None
    };
    Ok(WebSocketUpgrade { accept: tungstenite::handshake::derive_accept_key(key.as_bytes()), subprotocol })
}

/// A valid WebSocket upgrade request, ready to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketUpgrade {
    accept: String,
    subprotocol: Option<&'static str>,
}

impl WebSocketUpgrade {
    /// The `Sec-WebSocket-Accept` value.
    pub fn accept_key(&self) -> &str {
        &self.accept
    }

    /// The subprotocol selected ([`SUBPROTOCOL`] if the client offered it).
    pub fn subprotocol(&self) -> Option<&'static str> {
        self.subprotocol
    }

    /// The `101 Switching Protocols` response. No extension is accepted and
    /// the `bearer.` subprotocol is never echoed.
    pub fn response(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        out.extend_from_slice(self.accept.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(p) = self.subprotocol {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A complete response: status line, `Content-Type`, `Content-Length`,
/// `Connection: keep-alive` or `close`, and the body.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    response_with_headers(status, &[], content_type, body, keep_alive)
}

/// [`response`] with extra header fields (`Allow`, `Retry-After`, …).
/// Names and values must not contain CR or LF; they are the server's own
/// constants, never request data.
pub fn response_with_headers(
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    for (name, value) in headers {
        debug_assert!(!name.contains(['\r', '\n']) && !value.contains(['\r', '\n']));
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    out.extend_from_slice(
        format!("Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n", body.len())
            .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// The JSON body for a protocol error:
/// `{"error":{"code":204,"name":"sender-mismatch","reason":"..."}}`.
pub fn error_body(code: ErrorCode, reason: &str) -> Vec<u8> {
    to_json(&ErrorBody {
        error: ErrorDetail { code: Some(code.code()), name: Some(code.name()), status: None, reason },
    })
}

/// A complete response for a protocol error, with the error's HTTP status
/// ([`ErrorCode::http_status`]) and [`error_body`]. A 401 carries
/// `WWW-Authenticate: Bearer` (RFC 6750 §3).
pub fn error_response(code: ErrorCode, reason: &str, keep_alive: bool) -> Vec<u8> {
    let status = code.http_status();
    let headers: &[(&str, &str)] = match code {
        ErrorCode::InvalidToken | ErrorCode::TokenExpired => &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")],
        _ if status == 401 => &[("WWW-Authenticate", "Bearer")],
        _ => &[],
    };
    response_with_headers(status, headers, JSON, &error_body(code, reason), keep_alive)
}

/// The JSON body for an accepted send:
/// `{"id":"<uuid>","outcome":"delivered","recipients":1}`.
pub fn accepted_body(id: EnvelopeId, outcome: Outcome, recipients: u32) -> Vec<u8> {
    to_json(&AcceptedBody { id: id.to_string(), outcome: outcome.name(), recipients })
}

/// A complete `202 Accepted` response with [`accepted_body`].
pub fn accepted_response(id: EnvelopeId, outcome: Outcome, recipients: u32, keep_alive: bool) -> Vec<u8> {
    response(202, JSON, &accepted_body(id, outcome, recipients), keep_alive)
}

/// Why a request head was refused. Each variant knows the HTTP status to
/// answer with; the connection is closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Not a valid HTTP/1.x request head (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// No end of head within [`MAX_HEAD_LEN`] bytes (431).
    #[error("request head longer than 8192 bytes")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields (431).
    #[error("more than 32 header fields")]
    TooManyHeaders,
    /// A header that must appear once appeared twice (400).
    #[error("duplicate {0} header")]
    DuplicateHeader(&'static str),
    /// A required header is missing (400).
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header value is malformed (400).
    #[error("invalid {0} header")]
    InvalidHeader(&'static str),
    /// `Content-Length` above [`MAX_CONTENT_LENGTH`] (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// `Transfer-Encoding: chunked` (411: send `Content-Length` instead).
    #[error("chunked request bodies are not supported; send Content-Length")]
    LengthRequired,
    /// A transfer coding other than chunked (501).
    #[error("transfer coding not implemented")]
    TransferCodingNotImplemented,
    /// An `Expect` other than `100-continue` (417).
    #[error("unsupported expectation")]
    ExpectationFailed,
    /// The method is not allowed on this resource (405).
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The value of the `Allow` header to answer with.
        allow: &'static str,
    },
    /// `GET /connect` without `Upgrade: websocket` (426).
    #[error("this endpoint needs a WebSocket upgrade")]
    UpgradeRequired,
    /// `Sec-WebSocket-Version` other than 13 (426, with
    /// `Sec-WebSocket-Version: 13`).
    #[error("unsupported WebSocket version (this server speaks 13)")]
    UnsupportedWebSocketVersion,
    /// Subprotocols were offered but not `switchboard.v1` (400,
    /// `unsupported-version`).
    #[error("subprotocol switchboard.v1 not offered")]
    UnsupportedSubprotocol,
    /// A token was presented but cannot be one (401, `invalid-token`).
    #[error("malformed bearer token: {0}")]
    MalformedToken(&'static str),
}

impl HttpError {
    /// The HTTP status to answer with.
    pub const fn status(&self) -> u16 {
        match self {
            Self::Malformed(_)
            | Self::DuplicateHeader(_)
            | Self::MissingHeader(_)
            | Self::InvalidHeader(_)
            | Self::UnsupportedSubprotocol => 400,
            Self::MalformedToken(_) => 401,
            Self::MethodNotAllowed { .. } => 405,
            Self::LengthRequired => 411,
            Self::BodyTooLarge => 413,
            Self::ExpectationFailed => 417,
            Self::UpgradeRequired | Self::UnsupportedWebSocketVersion => 426,
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::TransferCodingNotImplemented => 501,
        }
    }

    /// The protocol error code, for errors that are protocol errors (their
    /// body then has the docs/protocol.md form); `None` for plain HTTP
    /// errors.
    pub const fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::MalformedToken(_) => Some(ErrorCode::InvalidToken),
            Self::UnsupportedSubprotocol => Some(ErrorCode::UnsupportedVersion),
            Self::BodyTooLarge => Some(ErrorCode::EnvelopeTooLarge),
            _ => None,
        }
    }

    /// The complete response, with `Connection: close`. Protocol errors get
    /// [`error_body`] (with this error's status); plain HTTP errors get
    /// `{"error":{"status":431,"reason":"..."}}`. Carries `Allow` on 405,
    /// `Upgrade` and `Sec-WebSocket-Version` on 426, `WWW-Authenticate` on 401.
    pub fn response(&self) -> Vec<u8> {
        let reason = self.to_string();
        let body = match self.code() {
            Some(code) => error_body(code, &reason),
            None => to_json(&ErrorBody {
                error: ErrorDetail { code: None, name: None, status: Some(self.status()), reason: &reason },
            }),
        };
        let allow;
        let headers: &[(&str, &str)] = match self {
            Self::MethodNotAllowed { allow: a } => {
                allow = [("Allow", *a)];
                &allow
            }
            Self::UpgradeRequired | Self::UnsupportedWebSocketVersion => {
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", WEBSOCKET_VERSION)]
            }
            Self::MalformedToken(_) => &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")],
            _ => &[],
        };
        response_with_headers(self.status(), headers, JSON, &body, false)
    }
}

const JSON: &str = "application/json";

/// JSON bodies are structs, not `json!` maps, so the field order is the
/// documented one whatever serde_json features are enabled.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(serde::Serialize)]
struct ErrorDetail<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    reason: &'a str,
}

#[derive(serde::Serialize)]
struct AcceptedBody {
    id: String,
    outcome: &'static str,
    recipients: u32,
}

fn to_json(body: &impl serde::Serialize) -> Vec<u8> {
    // Structs of strings and integers always serialize.
    serde_json::to_vec(body).expect("JSON body serializes")
}

/// Splits a request target into path and query. Origin form (`/p?q`),
/// absolute form (`http://host/p?q`, RFC 9112 §3.2.2: servers must accept
/// it) and `OPTIONS *`.
fn split_target<'a>(method: &str, target: &'a str) -> Result<(&'a str, Option<&'a str>), HttpError> {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    if target == "*" && method == "OPTIONS" {
        return Ok(("*", None));
    }
    let origin = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(HttpError::Malformed("invalid request target"));
        };
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            Some(i) => return Ok(("/", Some(&rest[i + 1..]))),
            None => "/",
        }
    };
    Ok(match origin.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (origin, None),
    })
}

fn header_str<'b>(name: &'static str, value: &'b [u8]) -> Result<&'b str, HttpError> {
    std::str::from_utf8(value).map_err(|_| HttpError::InvalidHeader(name))
}

fn set_once(slot: &mut Option<String>, name: &'static str, value: &[u8]) -> Result<(), HttpError> {
    if slot.is_some() {
        return Err(HttpError::DuplicateHeader(name));
    }
    *slot = Some(header_str(name, value)?.to_owned());
    Ok(())
}

/// Appends the comma-separated elements of a list header (RFC 9110 §5.6.1),
/// skipping empty ones.
fn push_tokens(list: &mut Vec<String>, name: &'static str, value: &[u8], lowercase: bool) -> Result<(), HttpError> {
    for token in header_str(name, value)?.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        list.push(if lowercase { token.to_ascii_lowercase() } else { token.to_owned() });
    }
    Ok(())
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::InvalidHeader("content-length"));
    }
    // Digits only, so the only possible failure is overflow: far too large.
    let len = std::str::from_utf8(value).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(u64::MAX);
    if len > MAX_CONTENT_LENGTH {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(len)
}

/// A request with `Transfer-Encoding` is always refused; this picks the
/// status (RFC 9112 §6.1, §6.3).
fn transfer_encoding_error(te: &str, has_content_length: bool, version: Version) -> HttpError {
    if has_content_length {
        return HttpError::Malformed("both Transfer-Encoding and Content-Length");
    }
    if version == Version::Http10 {
        return HttpError::Malformed("Transfer-Encoding in an HTTP/1.0 request");
    }
    let codings: Vec<&str> = te.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    match codings.last() {
        Some(last) if last.eq_ignore_ascii_case("chunked") => {
            if codings.iter().all(|c| c.eq_ignore_ascii_case("chunked")) {
                HttpError::LengthRequired
            } else {
                HttpError::TransferCodingNotImplemented
            }
        }
        _ => HttpError::Malformed("chunked is not the final transfer coding"),
    }
}

/// The credentials of `Authorization: Bearer <token>`; `None` for another
/// scheme.
fn bearer_credentials(value: &str) -> Result<Option<&str>, HttpError> {
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches([' ', '\t']);
    check_token_chars(token)?;
    Ok(Some(token))
}

/// The percent-decoded value of the `token` query parameter.
fn query_token(query: &str) -> Result<Option<Cow<'_, str>>, HttpError> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "token" {
            continue;
        }
        if found.is_some() {
            return Err(HttpError::MalformedToken("more than one token parameter"));
        }
        let token = percent_decode(value).ok_or(HttpError::MalformedToken("bad percent-encoding"))?;
        check_token_chars(&token)?;
        found = Some(token);
    }
    Ok(found)
}

/// A token must be non-empty visible ASCII (a JWT is base64url and dots);
/// the authenticator checks the rest.
fn check_token_chars(token: &str) -> Result<(), HttpError> {
    if token.is_empty() {
        return Err(HttpError::MalformedToken("empty token"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::MalformedToken("token contains invalid characters"));
    }
    Ok(())
}

/// Decodes `%XX` escapes and `+` (form encoding, as `URLSearchParams`
/// writes it). `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid method or token",
        httparse::Error::Version => "invalid HTTP version",
        _ => "invalid request head",
    }
}

/// Reason phrases (RFC 9110 §15) for the statuses the server uses; others
/// get an empty phrase, which RFC 9112 §4 allows.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake of RFC 6455 §1.3.
    const RFC_UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, switchboard.v1\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(buf: &[u8]) -> Result<RequestHead, HttpError> {
        match parse_request(buf)? {
            Some((head, len)) => {
                assert_eq!(len, buf.len(), "tests pass exactly one head");
                Ok(head)
            }
            None => panic!("incomplete head"),
        }
    }

    fn get(headers: &str) -> Result<RequestHead, HttpError> {
        parse(format!("GET /connect HTTP/1.1\r\nHost: h\r\n{headers}\r\n").as_bytes())
    }

    fn upgrade_with(extra: &str) -> Result<RequestHead, HttpError> {
        get(&format!(
            "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}"
        ))
    }

    #[test]
    fn parses_the_rfc_6455_handshake() {
        let head = parse(RFC_UPGRADE).unwrap();
        assert_eq!(head.method(), Method::Get);
        assert_eq!(head.version(), Version::Http11);
        assert_eq!(head.path(), "/chat");
        assert_eq!(head.query(), None);
        assert_eq!(head.host(), Some("server.example.com"));
        assert_eq!(head.upgrade(), ["websocket"]);
        assert_eq!(head.connection(), ["upgrade"]);
        assert_eq!(head.sec_websocket_key(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(head.sec_websocket_version(), Some("13"));
        assert_eq!(head.sec_websocket_protocol(), ["chat", "switchboard.v1"]);
        assert!(head.keep_alive());
        assert!(head.wants_websocket());

        let upgrade = validate_websocket_upgrade(&head).unwrap();
        assert_eq!(upgrade.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.subprotocol(), Some(SUBPROTOCOL));
        assert_eq!(
            upgrade.response(),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: switchboard.v1\r\n\r\n"
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_trailing_bytes_are_not_consumed() {
        for end in 0..RFC_UPGRADE.len() {
            assert_eq!(parse_request(&RFC_UPGRADE[..end]), Ok(None), "prefix of {end} bytes");
        }
        let mut with_body = RFC_UPGRADE.to_vec();
        with_body.extend_from_slice(b"\x81\x85 next bytes");
        let (_, len) = parse_request(&with_body).unwrap().unwrap();
        assert_eq!(len, RFC_UPGRADE.len());
    }

    #[test]
    fn bounds_head_size_and_header_count() {
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD_LEN - 1, b'a');
        assert_eq!(parse_request(&big), Ok(None));
        big.push(b'a');
        assert_eq!(parse_request(&big), Err(HttpError::HeadTooLarge));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&big), Err(HttpError::HeadTooLarge));

        // A head of exactly MAX_HEAD_LEN bytes is fine.
        let mut exact = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        exact.resize(MAX_HEAD_LEN - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&exact).unwrap().unwrap().1, MAX_HEAD_LEN);

        let fields = |n: usize| (0..n).map(|i| format!("X-{i}: v\r\n")).collect::<String>();
        assert!(get(&fields(MAX_HEADERS - 1)).is_ok());
        assert_eq!(get(&fields(MAX_HEADERS)), Err(HttpError::TooManyHeaders));
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn refuses_malformed_heads() {
        for bad in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET  HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\nHost: h\r\n\x01\r\n\r\n",
            b"GET\x00 / HTTP/1.1\r\n\r\n",
            b"GET example.com HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert_eq!(err.status(), 400, "{:?} → {err}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Err(HttpError::MissingHeader("host")));
        // HTTP/1.0 does not need Host.
        let head = parse(b"GET /x HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(head.version(), Version::Http10);
        assert!(!head.keep_alive());
    }

    #[test]
    fn splits_targets() {
        let head = parse(b"POST /send?a=1&token=x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((head.method(), head.path(), head.query()), (Method::Post, "/send", Some("a=1&token=x")));
        let head = parse(b"GET http://example.com/connect?q HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((head.path(), head.query()), ("/connect", Some("q")));
        let head = parse(b"GET HTTPS://example.com HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((head.path(), head.query()), ("/", None));
        let head = parse(b"GET http://example.com?q=1 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((head.path(), head.query()), ("/", Some("q=1")));
        let head = parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!((head.method(), head.path()), (Method::Options, "*"));
        let head = parse(b"BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(head.method(), Method::Other);
        // Methods are case-sensitive.
        assert_eq!(parse(b"get / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().method(), Method::Other);
    }

    #[test]
    fn body_framing() {
        let head = get("Content-Length: 148\r\nContent-Type: application/octet-stream\r\n").unwrap();
        assert_eq!(head.content_length(), Some(148));
        assert_eq!(head.content_type(), Some("application/octet-stream"));
        assert_eq!(get("").unwrap().content_length(), None);
        assert_eq!(
            get(&format!("Content-Length: {MAX_CONTENT_LENGTH}\r\n")).unwrap().content_length(),
            Some(MAX_CONTENT_LENGTH)
        );
        assert_eq!(get(&format!("Content-Length: {}\r\n", MAX_CONTENT_LENGTH + 1)), Err(HttpError::BodyTooLarge));
        assert_eq!(get("Content-Length: 99999999999999999999999\r\n"), Err(HttpError::BodyTooLarge));
        assert_eq!(HttpError::BodyTooLarge.status(), 413);
        for bad in ["-1", "+1", "1 2", "0x10", "5, 5", ""] {
            assert_eq!(
                get(&format!("Content-Length: {bad}\r\n")),
                Err(HttpError::InvalidHeader("content-length")),
                "{bad:?}"
            );
        }
        assert_eq!(
            get("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Err(HttpError::DuplicateHeader("content-length"))
        );

        assert_eq!(get("Transfer-Encoding: chunked\r\n"), Err(HttpError::LengthRequired));
        assert_eq!(get("Transfer-Encoding: Chunked\r\n"), Err(HttpError::LengthRequired));
        assert_eq!(HttpError::LengthRequired.status(), 411);
        assert_eq!(get("Transfer-Encoding: gzip, chunked\r\n"), Err(HttpError::TransferCodingNotImplemented));
        assert_eq!(
            get("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
            Err(HttpError::TransferCodingNotImplemented)
        );
        assert_eq!(get("Transfer-Encoding: gzip\r\n").unwrap_err().status(), 400);
        assert_eq!(get("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n").unwrap_err().status(), 400);
        assert_eq!(parse(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err().status(), 400);

        assert!(get("Expect: 100-continue\r\n").unwrap().expect_continue());
        assert!(!get("").unwrap().expect_continue());
        assert_eq!(get("Expect: something\r\n"), Err(HttpError::ExpectationFailed));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(get("").unwrap().keep_alive());
        assert!(!get("Connection: Close\r\n").unwrap().keep_alive());
        assert!(!get("Connection: keep-alive\r\nConnection: close\r\n").unwrap().keep_alive());
        assert!(parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive());
    }

    #[test]
    fn header_values_must_be_utf8() {
        let head = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Other: \xff\r\n\r\n").unwrap();
        assert_eq!(head.path(), "/");
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer \xff\r\n\r\n"),
            Err(HttpError::InvalidHeader("authorization"))
        );
    }

    #[test]
    fn token_from_authorization_query_or_subprotocol() {
        let token = |head: &RequestHead| head.bearer_token().map(|t| t.map(|t| (t.jwt().to_owned(), t.source())));
        let src = TokenSource::Authorization;
        assert_eq!(token(&get("Authorization: Bearer a.b.c\r\n").unwrap()), Ok(Some(("a.b.c".into(), src))));
        assert_eq!(token(&get("Authorization: bEaReR   a.b.c\r\n").unwrap()), Ok(Some(("a.b.c".into(), src))));
        // Authorization wins over the query and the subprotocol.
        let head = parse(
            b"GET /connect?token=q.q.q HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer h.h.h\r\n\
              Sec-WebSocket-Protocol: switchboard.v1, bearer.s.s.s\r\n\r\n",
        )
        .unwrap();
        assert_eq!(token(&head), Ok(Some(("h.h.h".into(), src))));

        // Another scheme is not a bearer token: fall through.
        let head = parse(
            b"GET /connect?a=1&token=q%2Eq.q&b HTTP/1.1\r\nHost: h\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\
              Sec-WebSocket-Protocol: switchboard.v1, bearer.s.s.s\r\n\r\n",
        )
        .unwrap();
        assert_eq!(token(&head), Ok(Some(("q.q.q".into(), TokenSource::Query))));

        let head = upgrade_with("Sec-WebSocket-Protocol: switchboard.v1, bearer.s.s.s\r\n").unwrap();
        assert_eq!(token(&head), Ok(Some(("s.s.s".into(), TokenSource::Subprotocol))));
        let head =
            upgrade_with("Sec-WebSocket-Protocol: bearer.s.s.s\r\nSec-WebSocket-Protocol: switchboard.v1\r\n").unwrap();
        assert_eq!(token(&head), Ok(Some(("s.s.s".into(), TokenSource::Subprotocol))));

        assert_eq!(token(&get("").unwrap()), Ok(None));
        assert_eq!(token(&parse(b"GET /?tokens=x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap()), Ok(None));
    }

    #[test]
    fn malformed_tokens_are_invalid_tokens() {
        for bad in [
            "Authorization: Bearer\r\n",
            "Authorization: Bearer   \r\n",
            "Authorization: Bearer a b\r\n",
            "Sec-WebSocket-Protocol: bearer.\r\n",
            "Sec-WebSocket-Protocol: bearer.a, bearer.b\r\n",
        ] {
            let err = get(bad).unwrap().bearer_token().unwrap_err();
            assert!(matches!(err, HttpError::MalformedToken(_)), "{bad:?}");
            assert_eq!(err.status(), 401);
            assert_eq!(err.code(), Some(ErrorCode::InvalidToken));
        }
        for query in ["token=", "token", "token=a%2", "token=a%zz", "token=%ff", "token=a&token=b", "token=a+b"] {
            let head = parse(format!("GET /?{query} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).unwrap();
            assert!(matches!(head.bearer_token(), Err(HttpError::MalformedToken(_))), "{query:?}");
        }
        let response = HttpError::MalformedToken("empty token").response();
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\n"), "{text}");
        assert!(text.ends_with(
            r#"{"error":{"code":301,"name":"invalid-token","reason":"malformed bearer token: empty token"}}"#
        ));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc").as_deref(), Some("abc"));
        assert_eq!(percent_decode("a%2Eb%2ec+d").as_deref(), Some("a.b.c d"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%G0"), None);
        assert_eq!(percent_decode("%C3"), None);
    }

    #[test]
    fn debug_redacts_tokens() {
        let head = parse(
            b"GET /connect?token=SECRET1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer SECRET2\r\n\
              Sec-WebSocket-Protocol: switchboard.v1, bearer.SECRET3\r\n\r\n",
        )
        .unwrap();
        let debug = format!("{head:?} {:?}", head.bearer_token().unwrap().unwrap());
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("switchboard.v1"), "{debug}");
    }

    #[test]
    fn upgrade_validation() {
        let ok = validate_websocket_upgrade(&upgrade_with("").unwrap()).unwrap();
        assert_eq!(ok.subprotocol(), None);
        let text = String::from_utf8(ok.response()).unwrap();
        assert!(!text.contains("Sec-WebSocket-Protocol"), "{text}");
        assert!(!text.contains("Extensions"), "{text}");

        // Offered with a bearer token and an extension: select switchboard.v1
        // only, never echo the token, never accept the extension.
        let head = upgrade_with(
            "Sec-WebSocket-Protocol: switchboard.v1, bearer.t.o.k\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        )
        .unwrap();
        let text = String::from_utf8(validate_websocket_upgrade(&head).unwrap().response()).unwrap();
        assert!(text.contains("\r\nSec-WebSocket-Protocol: switchboard.v1\r\n"), "{text}");
        assert!(!text.contains("bearer"), "{text}");
        assert!(!text.contains("deflate"), "{text}");
        // Only a bearer value offered: nothing to select.
        let head = upgrade_with("Sec-WebSocket-Protocol: bearer.t.o.k\r\n").unwrap();
        assert_eq!(validate_websocket_upgrade(&head).unwrap().subprotocol(), None);
        // Another version of the protocol only.
        let head = upgrade_with("Sec-WebSocket-Protocol: switchboard.v2\r\n").unwrap();
        assert_eq!(validate_websocket_upgrade(&head), Err(HttpError::UnsupportedSubprotocol));
        assert_eq!(HttpError::UnsupportedSubprotocol.code(), Some(ErrorCode::UnsupportedVersion));

        let check = |req: &str| validate_websocket_upgrade(&parse(req.as_bytes()).unwrap());
        const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        const V13: &str = "Sec-WebSocket-Version: 13\r\n";
        const UPGRADE: &str = "Upgrade: WebSocket\r\nConnection: Upgrade\r\n";
        assert!(check(&format!("GET / HTTP/1.1\r\nHost: h\r\n{UPGRADE}{KEY}{V13}\r\n")).is_ok());
        assert_eq!(
            check(&format!("POST / HTTP/1.1\r\nHost: h\r\n{UPGRADE}{KEY}{V13}\r\n")),
            Err(HttpError::MethodNotAllowed { allow: "GET" })
        );
        assert_eq!(check(&format!("GET / HTTP/1.0\r\n{UPGRADE}{KEY}{V13}\r\n")).unwrap_err().status(), 400);
        assert_eq!(check(&format!("GET / HTTP/1.1\r\nHost: h\r\n{KEY}{V13}\r\n")), Err(HttpError::UpgradeRequired));
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n{KEY}{V13}\r\n")),
            Err(HttpError::UpgradeRequired)
        );
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n{KEY}{V13}\r\n")).unwrap_err().status(),
            400
        );
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: h\r\n{UPGRADE}{KEY}Sec-WebSocket-Version: 8\r\n\r\n")),
            Err(HttpError::UnsupportedWebSocketVersion)
        );
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: h\r\n{UPGRADE}{KEY}\r\n")),
            Err(HttpError::MissingHeader("sec-websocket-version"))
        );
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: h\r\n{UPGRADE}{V13}\r\n")),
            Err(HttpError::MissingHeader("sec-websocket-key"))
        );
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZQ==",
            "!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(
                check(&format!("GET / HTTP/1.1\r\nHost: h\r\n{UPGRADE}Sec-WebSocket-Key: {key}\r\n{V13}\r\n")),
                Err(HttpError::InvalidHeader("sec-websocket-key")),
                "{key}"
            );
        }
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\nHost: h\r\n{UPGRADE}{KEY}{KEY}{V13}\r\n").as_bytes()),
            Err(HttpError::DuplicateHeader("sec-websocket-key"))
        );
        assert_eq!(HttpError::DuplicateHeader("x").status(), 400);
    }

    #[test]
    fn accept_key_matches_tungstenite_client_handshake() {
        // The key a real client generates, and the accept it expects.
        let key = tungstenite::handshake::client::generate_key();
        let head = upgrade_with("").unwrap();
        let mut head = head;
        head.sec_websocket_key = Some(key.clone());
        let upgrade = validate_websocket_upgrade(&head).unwrap();
        assert_eq!(upgrade.accept_key(), tungstenite::handshake::derive_accept_key(key.as_bytes()));
    }

    #[test]
    fn error_responses() {
        let sent = error_response(ErrorCode::SenderMismatch, "sender \"bob\" is not you", true);
        let body = br#"{"error":{"code":204,"name":"sender-mismatch","reason":"sender \"bob\" is not you"}}"#;
        let mut expected = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: keep-alive\r\n\r\n",
            body.len()
        )
        .into_bytes();
        expected.extend_from_slice(body);
        assert_eq!(String::from_utf8(sent).unwrap(), String::from_utf8(expected).unwrap());

        let text = String::from_utf8(error_response(ErrorCode::Unauthenticated, "no token", false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        let text = String::from_utf8(error_response(ErrorCode::TokenExpired, "expired", false)).unwrap();
        assert!(text.contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"), "{text}");

        let text = String::from_utf8(HttpError::HeadTooLarge.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text}");
        assert!(text.ends_with(r#"{"error":{"status":431,"reason":"request head longer than 8192 bytes"}}"#), "{text}");
        let text = String::from_utf8(HttpError::UnsupportedWebSocketVersion.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n"), "{text}");
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        let text = String::from_utf8(HttpError::MethodNotAllowed { allow: "GET" }.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"), "{text}");
        let text = String::from_utf8(HttpError::BodyTooLarge.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 413 Content Too Large\r\n"), "{text}");
        assert!(text.contains(r#""name":"envelope-too-large""#), "{text}");

        assert_eq!(
            response(299, "text/plain", b"x", false),
            b"HTTP/1.1 299 \r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        );
    }

    #[test]
    fn accepted_responses() {
        let id: EnvelopeId = "0190a5c2-7b1e-7c3d-8e4f-5a6b7c8d9e0f".parse().unwrap();
        assert_eq!(
            accepted_body(id, Outcome::Delivered, 1),
            br#"{"id":"0190a5c2-7b1e-7c3d-8e4f-5a6b7c8d9e0f","outcome":"delivered","recipients":1}"#
        );
        let text = String::from_utf8(accepted_response(id, Outcome::Stored, 0, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"), "{text}");
        assert!(text.ends_with(r#""outcome":"stored","recipients":0}"#), "{text}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet = b"GET /?=&%+token HTTP/1.1\r\n: ,Host Upgrade websocket Connection bearer.Bearer 13 \xff\x00";
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            let len = (next() % 300) as usize;
            if next() % 2 == 0 {
                buf.extend_from_slice(&RFC_UPGRADE[..(next() as usize % RFC_UPGRADE.len())]);
            }
            buf.extend((0..len).map(|_| {
                let r = next();
                if r % 4 == 0 { r as u8 } else { alphabet[(r >> 8) as usize % alphabet.len()] }
            }));
            buf.extend_from_slice(b"\r\n\r\n");
            if let Ok(Some((head, len))) = parse_request(&buf) {
                assert!(len <= buf.len());
                let _ = head.bearer_token();
                let _ = validate_websocket_upgrade(&head).map(|u| u.response());
                let _ = format!("{head:?}");
            }
        }
    }
}
