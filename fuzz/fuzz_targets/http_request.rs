//! `http::parse_request` on arbitrary bytes, as the server calls it on the
//! bytes received so far. A head that parses is read through every accessor,
//! `bearer_token` and `validate_websocket_upgrade` (and the 101 response);
//! every error builds its response. Checked: the head lies within the input
//! and within `MAX_HEAD_LEN`, it depends only on its own bytes, every strict
//! prefix of it asks for more bytes (so a head received in pieces parses the
//! same), an incomplete head grown to `MAX_HEAD_LEN` bytes gets a verdict, and the
//! accessors keep their documented promises (lowercased lists, a token that
//! never shows in `Debug` output, a 101 that never echoes `bearer.`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::frontend::http::{
    self, BEARER_SUBPROTOCOL_PREFIX, HttpError, MAX_CONTENT_LENGTH, MAX_HEAD_LEN, Method, RequestHead, SUBPROTOCOL,
    TokenSource, Version,
};

fn check_error(e: &HttpError) {
    let status = e.status();
    assert!(matches!(status, 400 | 401 | 405 | 411 | 413 | 417 | 426 | 431 | 501), "{e:?}: {status}");
    let response = e.response();
    let text = String::from_utf8(response).expect("responses are UTF-8");
    assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n\r\n"), "{text}");
}

/// True if `token` cannot show up in a `Debug` string unless one of
/// `public` holds it: long, no space, quote or backslash (the `Debug`
/// skeleton has spaces between fields and escapes quotes and backslashes).
fn traceable(token: &str, public: &[&str]) -> bool {
    token.len() >= 24 && !token.contains(['"', '\\', ' ']) && !public.iter().any(|p| p.contains(token))
}

fn check_head(head: &RequestHead) {
    let method = head.method();
    let version = head.version();
    let path = head.path();
    let query = head.query();
    assert!(path.starts_with('/') || (path == "*" && method == Method::Options), "path {path:?}");
    assert!(!path.contains(['?', '#']), "path {path:?}");
    assert!(!query.is_some_and(|q| q.contains('#')), "query {query:?}");
    let host = head.host();
    if version == Version::Http11 {
        assert!(host.is_some(), "HTTP/1.1 without host");
    }
    for list in [head.upgrade(), head.connection()] {
        for token in list {
            assert!(!token.is_empty() && token.trim() == token && !token.contains(','), "{token:?}");
            assert_eq!(*token, token.to_ascii_lowercase());
        }
    }
    for token in head.sec_websocket_protocol() {
        assert!(!token.is_empty() && token.trim() == token && !token.contains(','), "{token:?}");
    }
    let key = head.sec_websocket_key();
    let ws_version = head.sec_websocket_version();
    let authorization = head.authorization();
    if let Some(len) = head.content_length() {
        assert!(len <= MAX_CONTENT_LENGTH);
    }
    let content_type = head.content_type();
    let _ = head.expect_continue();
    let keep_alive = match version {
        Version::Http11 => !head.has_connection_option("close"),
        _ => head.has_connection_option("keep-alive"),
    };
    assert_eq!(head.keep_alive(), keep_alive);
    assert_eq!(head.wants_websocket(), head.upgrade().iter().any(|u| u == "websocket"));

    let debug = format!("{head:?}");
    // What `Debug` may show: everything but the query, `Authorization` and
    // `bearer.` subprotocols.
    let (upgrade, connection) = (head.upgrade().join(","), head.connection().join(","));
    let mut public: Vec<&str> = vec![path, &upgrade, &connection];
    public.extend(host.into_iter().chain(key).chain(ws_version).chain(content_type));
    let protocols = head.sec_websocket_protocol().iter().map(String::as_str);
    public.extend(protocols.filter(|p| !p.starts_with(BEARER_SUBPROTOCOL_PREFIX)));
    for secret in authorization.into_iter().chain(query) {
        if traceable(secret, &public) {
            assert!(!debug.contains(secret), "a secret header shows in {debug}");
        }
    }

    match head.bearer_token() {
        Ok(Some(token)) => {
            let jwt = token.jwt();
            assert!(!jwt.is_empty() && jwt.bytes().all(|b| b.is_ascii_graphic()), "token {jwt:?}");
            let source = token.source();
            let _ = source.name();
            match source {
                TokenSource::Authorization => assert!(authorization.is_some_and(|a| a.contains(jwt))),
                TokenSource::Query => assert!(query.is_some_and(|q| q.contains("token"))),
                TokenSource::Subprotocol => {
                    let offered = format!("{BEARER_SUBPROTOCOL_PREFIX}{jwt}");
                    assert!(head.sec_websocket_protocol().contains(&offered));
                }
                _ => {}
            }
            if traceable(jwt, &public) {
                assert!(!debug.contains(jwt), "the token shows in {debug}");
                assert!(!format!("{token:?}").contains(jwt));
            }
        }
        Ok(None) => {}
        Err(e) => {
            assert!(matches!(e, HttpError::MalformedToken(_)), "{e:?}");
            check_error(&e);
        }
    }

    match http::validate_websocket_upgrade(head) {
        Ok(upgrade) => {
            assert_eq!((method, version), (Method::Get, Version::Http11));
            assert!(head.wants_websocket() && head.has_connection_option("upgrade"));
            assert_eq!(ws_version, Some("13"));
            let accept = upgrade.accept_key();
            assert_eq!(accept.len(), 28, "base64 of a SHA-1: {accept:?}");
            let subprotocol = upgrade.subprotocol();
            assert_eq!(subprotocol.is_some(), head.sec_websocket_protocol().iter().any(|p| p == SUBPROTOCOL));
            let response = String::from_utf8(upgrade.response()).expect("UTF-8");
            assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{response}");
            assert!(response.ends_with("\r\n\r\n") && response.contains(accept));
            assert!(!response.contains(BEARER_SUBPROTOCOL_PREFIX), "{response}");
            assert_eq!(response.matches("\r\n").count(), 5 + usize::from(subprotocol.is_some()));
        }
        Err(e) => check_error(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    match http::parse_request(data) {
        Ok(Some((head, len))) => {
            assert!(len > 0 && len <= data.len() && len <= MAX_HEAD_LEN, "head of {len} of {} bytes", data.len());
            // The head is its own bytes: the same without what follows…
            assert_eq!(http::parse_request(&data[..len]), Ok(Some((head.clone(), len))));
            // …and any strict prefix of it asks for more (the server parses
            // what it has after every read).
            let seed = data.iter().fold(data.len(), |h, &b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
            for prefix in [len - 1, len / 2, seed % len] {
                assert_eq!(http::parse_request(&data[..prefix]), Ok(None), "prefix of {prefix} of a {len}-byte head");
            }
            check_head(&head);
        }
        Ok(None) => {
            assert!(data.len() < MAX_HEAD_LEN, "{} bytes without a complete head", data.len());
            // However the head goes on, the server stops reading it at
            // MAX_HEAD_LEN bytes.
            if !data.is_empty() {
                let mut long = vec![0; MAX_HEAD_LEN];
                for chunk in long.chunks_mut(data.len()) {
                    chunk.copy_from_slice(&data[..chunk.len()]);
                }
                match http::parse_request(&long) {
                    Ok(None) => panic!("{MAX_HEAD_LEN} bytes without a verdict"),
                    Ok(Some((head, len))) => {
                        assert!(len <= MAX_HEAD_LEN);
                        check_head(&head);
                    }
                    Err(e) => check_error(&e),
                }
            }
        }
        Err(e) => check_error(&e),
    }
});
