use super::*;

fn feed_all(s: &mut HttpStream, parts: &[&[u8]]) -> Vec<HttpEvent> {
    let mut out = Vec::new();
    for p in parts {
        s.feed(p, &mut out);
    }
    out
}

const UPGRADE: &[u8] = b"GET /ws?token=s3cret HTTP/1.1\r\nHost: gw.example\r\n\
    Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: https://gw.example\r\n\
    X-Request-ID: 0123456789abcdef0123456789abcdef\r\nX-Forwarded-For: 203.0.113.9\r\n\
    X-Forwarded-Proto: https\r\nAuthorization: Bearer nope\r\nCookie: a=b\r\n\r\n";

#[test]
fn request_head_fields_and_redaction() {
    let mut s = HttpStream::new(Role::Request);
    let out = feed_all(&mut s, &[UPGRADE]);
    assert_eq!(out[1], HttpEvent::Request, "{out:?}");
    let r = &s.take_request().expect("the head");
    assert_eq!(s.take_request(), None, "one head per request event");
    assert_eq!(out[0], HttpEvent::HeadStart);
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/ws?token=REDACTED");
    assert_eq!(r.host.as_deref(), Some("gw.example"));
    assert_eq!(r.origin.as_deref(), Some("https://gw.example"));
    assert_eq!(
        r.request_id.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(r.x_forwarded_for.as_deref(), Some("203.0.113.9"));
    assert_eq!(r.x_forwarded_proto.as_deref(), Some("https"));
    assert!(r.upgrade_websocket && r.connection_upgrade);
    assert!(matches!(out[2], HttpEvent::MessageEnd { .. }), "{out:?}");
    // Nothing of the credentials anywhere in what the parser produced.
    let all = format!("{out:?} {r:?}");
    assert!(!all.contains("s3cret") && !all.contains("Bearer") && !all.contains("a=b"));
}

#[test]
fn repeated_and_odd_headers_are_read_as_before() {
    // The first of a repeated header counts; a token counts in any repeat; names match in
    // any case, and a name of the same length as a wanted one is not taken for it; a body
    // framed by a repeated Transfer-Encoding whose second says chunked is chunked.
    let msg: &[u8] = b"POST /up HTTP/1.1\r\nHOST:  first \r\nhost: second\r\nX-Request-Ix: no\r\n\
        x-REQUEST-id: id-1\r\nUpgrade: h2c\r\nupgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\nTransfer-Encoding: gzip\r\n\
        transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let mut s = HttpStream::new(Role::Request);
    let out = feed_all(&mut s, &[msg]);
    assert_eq!(out[1], HttpEvent::Request, "{out:?}");
    let r = &s.take_request().expect("the head");
    assert_eq!(r.host.as_deref(), Some("first"));
    assert_eq!(r.request_id.as_deref(), Some("id-1"));
    assert_eq!(r.origin, None);
    assert!(r.upgrade_websocket && r.connection_upgrade, "{r:?}");
    let end = HttpEvent::MessageEnd {
        bytes: msg.len() as u64,
    };
    assert_eq!(
        out.last(),
        Some(&end),
        "the chunked body was read to its end: {out:?}"
    );
    // A Content-Length that is not a number loses sync rather than guessing.
    let mut s = HttpStream::new(Role::Request);
    let out = feed_all(&mut s, &[b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"]);
    assert!(
        out.iter().any(|e| matches!(e, HttpEvent::Lost { .. })),
        "{out:?}"
    );
}

#[test]
fn head_split_anywhere() {
    for split in 1..UPGRADE.len() {
        let mut s = HttpStream::new(Role::Request);
        let out = feed_all(&mut s, &[&UPGRADE[..split], &UPGRADE[split..]]);
        assert!(
            matches!(out.get(1), Some(HttpEvent::Request)),
            "split at {split}: {out:?}"
        );
        assert_eq!(
            s.take_request().map(|r| r.path),
            Some("/ws?token=REDACTED".into()),
            "split at {split}"
        );
    }
}

#[test]
fn split_and_whole_heads_alternate_on_one_stream() {
    // A split head is assembled in the stream's buffer, a whole one parsed in place: the
    // buffer must come back empty each time, whatever the order.
    let mut s = HttpStream::new(Role::Request);
    let a = b"GET /one HTTP/1.1\r\nHost: a\r\nX-Request-ID: r1\r\n\r\n";
    let b = b"GET /two HTTP/1.1\r\nHost: b\r\nX-Request-ID: r2\r\n\r\n";
    let c = b"GET /three HTTP/1.1\r\nHost: c\r\nX-Request-ID: r3\r\n\r\n";
    let out = feed_all(&mut s, &[&a[..7], &a[7..], b, &c[..30], &c[30..]]);
    let requests = out.iter().filter(|e| **e == HttpEvent::Request).count();
    assert_eq!(requests, 3, "{out:?}");
    let got: Vec<(Text, Option<Text>, Option<RequestId>)> = std::iter::from_fn(|| s.take_request())
        .map(|r| (r.path, r.host, r.request_id))
        .collect();
    let want = [
        ("/one", "a", "r1"),
        ("/two", "b", "r2"),
        ("/three", "c", "r3"),
    ]
    .map(|(p, h, r)| (p.into(), Some(h.into()), Some(r.into())));
    assert_eq!(got, want, "{out:?}");
    let ends = out
        .iter()
        .filter(|e| matches!(e, HttpEvent::MessageEnd { .. }))
        .count();
    assert_eq!(ends, 3, "{out:?}");
}

#[test]
fn keep_alive_with_bodies() {
    let mut req = HttpStream::new(Role::Request);
    let out = feed_all(
        &mut req,
        &[b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n"],
    );
    let ends = out
        .iter()
        .filter(|e| matches!(e, HttpEvent::MessageEnd { .. }))
        .count();
    let reqs = out
        .iter()
        .filter(|e| matches!(e, HttpEvent::Request))
        .count();
    assert_eq!((reqs, ends), (2, 2), "{out:?}");

    let mut resp = HttpStream::new(Role::Response);
    for _ in 0..3 {
        resp.expect(Expectation {
            head_request: false,
            connect_request: false,
        });
    }
    let out = feed_all(
        &mut resp,
        &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ],
    );
    let statuses: Vec<u16> = out
        .iter()
        .filter_map(|e| match e {
            HttpEvent::Response(r) => Some(r.status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, vec![200, 204, 200]);
    assert_eq!(
        out.iter()
            .filter(|e| matches!(e, HttpEvent::MessageEnd { .. }))
            .count(),
        3,
        "{out:?}"
    );
}

#[test]
fn upgrade_response_hands_over_the_rest() {
    let mut resp = HttpStream::new(Role::Response);
    resp.expect(Expectation {
        head_request: false,
        connect_request: false,
    });
    let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    let mut data = head.to_vec();
    data.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    let out = feed_all(&mut resp, &[&data]);
    assert!(
        out.contains(&HttpEvent::Upgraded { offset: head.len() }),
        "{out:?}"
    );
    assert!(resp.is_upgraded());
}

#[test]
fn gaps_in_bodies_keep_sync_and_gaps_in_heads_lose_it() {
    let mut resp = HttpStream::new(Role::Response);
    resp.expect(Expectation {
        head_request: false,
        connect_request: false,
    });
    resp.expect(Expectation {
        head_request: false,
        connect_request: false,
    });
    let mut out = Vec::new();
    resp.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc",
        &mut out,
    );
    resp.gap(997, &mut out);
    resp.feed(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        &mut out,
    );
    assert_eq!(
        out.iter()
            .filter(|e| matches!(e, HttpEvent::MessageEnd { .. }))
            .count(),
        2,
        "{out:?}"
    );

    let mut req = HttpStream::new(Role::Request);
    let mut out = Vec::new();
    req.feed(b"GET /x HTTP/1.1\r\nHo", &mut out);
    req.gap(10, &mut out);
    assert!(
        matches!(out.last(), Some(HttpEvent::Lost { .. })),
        "{out:?}"
    );
    req.feed(b"garbage", &mut out);
    req.feed(b"GET /y HTTP/1.1\r\n\r\n", &mut out);
    assert!(out.contains(&HttpEvent::Resynced), "{out:?}");
    assert_eq!(
        out.iter().rev().nth(1),
        Some(&HttpEvent::Request),
        "{out:?}"
    );
    assert_eq!(req.take_request().map(|r| r.path), Some("/y".into()));
}

#[test]
fn garbage_never_panics() {
    let inputs: [&[u8]; 6] = [
        b"\x00\x01\x02",
        b"GET \r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n",
    ];
    for input in inputs {
        for role in [Role::Request, Role::Response] {
            let mut s = HttpStream::new(role);
            let mut out = Vec::new();
            s.feed(input, &mut out);
            s.gap(5, &mut out);
            s.feed(input, &mut out);
        }
    }
}

#[test]
fn a_small_json_error_body_gives_its_code_only() {
    let mut s = HttpStream::new(Role::Response);
    let body = r#"{"error":{"message":"Proxy client attribution is required.","type":"proxy_attribution_required"}}"#;
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // Split inside the body: the code still comes out, before the message end.
    let (a, b) = body.split_at(40);
    let out = feed_all(&mut s, &[head.as_bytes(), a.as_bytes(), b.as_bytes()]);
    let n = out.len();
    assert_eq!(
        &out[n - 2..],
        &[
            HttpEvent::ErrorCode("proxy_attribution_required".into()),
            HttpEvent::MessageEnd {
                bytes: (head.len() + body.len()) as u64
            }
        ]
    );
    assert_eq!(error_code(br#"{"code": "E_BAD"}"#), Some("E_BAD".into()));
    assert_eq!(error_code(br#"{"type":"has space"}"#), None);
    assert_eq!(error_code(b"not json"), None);
    // Not JSON, or a success: not looked into.
    let mut s = HttpStream::new(Role::Response);
    let out = feed_all(
        &mut s,
        &[b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"type\":\"hello\"}"],
    );
    assert!(
        !out.iter().any(|e| matches!(e, HttpEvent::ErrorCode(_))),
        "{out:?}"
    );
}

#[test]
fn header_names_match_as_a_case_insensitive_compare_does() {
    // Every token character (what httparse lets into a name), at every position of every
    // name the parser looks for, and every case of each name.
    let tchars: Vec<u8> = (0u8..=127)
        .filter(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c))
        .collect();
    let wanted = [
        "host",
        "origin",
        "upgrade",
        "connection",
        "x-request-id",
        "content-type",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        "transfer-encoding",
    ];
    let mut checked = 0u32;
    for want in wanted {
        let w = want.as_bytes();
        let mut name = w.to_vec();
        for at in 0..w.len() {
            for &c in &tchars {
                name[at] = c;
                assert_eq!(
                    name_is(&name, w),
                    name.eq_ignore_ascii_case(w),
                    "{name:?} {want}"
                );
                checked += 1;
            }
            name[at] = w[at];
        }
        assert!(name_is(want.to_ascii_uppercase().as_bytes(), w));
        assert!(!name_is(&w[1..], w) && !name_is(&[w, b"x"].concat(), w));
    }
    assert!(checked > 8_000, "{checked}");
}

#[test]
fn heads_parsed_in_place_give_what_searching_for_the_end_first_gave() {
    // Streams of messages built from pieces that matter to where a head ends (CRLF and bare
    // LF line ends, a CR alone, obs-text, folded lines, bodies by length and by chunks,
    // malformed lines), fed whole and cut at random points, each way: the events, the
    // request heads and the state after each chunk must be the same.
    let pieces: [&[u8]; 24] = [
        b"GET /a?token=x HTTP/1.1\r\n",
        b"POST /up HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"HTTP/1.1 404 Not Found\n",
        b"Host: gw\r\n",
        b"X-Request-ID: 0123456789abcdef0123456789abcdef\r\n",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Origin: https://gw\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
        b"X-Odd: \xff\xfe\r\n",
        b" folded\r\n",
        b"Bad Header\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n\r\n",
        b"abc",
        b"3\r\nabc\r\n0\r\n\r\n",
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"\x00",
    ];
    let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
    let run = |role: Role, chunks: &[&[u8]], end_first: bool| {
        FIND_END_FIRST.set(end_first);
        let mut s = HttpStream::new(role);
        let mut seen = Vec::new();
        for c in chunks {
            let mut out = Vec::new();
            s.feed(c, &mut out);
            let heads: Vec<RequestHead> = std::iter::from_fn(|| s.take_request()).collect();
            seen.push(format!("{out:?} {heads:?} {:?} {:?}", s.state, s.buf));
        }
        FIND_END_FIRST.set(false);
        seen
    };
    let mut in_place_heads = 0;
    for _ in 0..20_000 {
        let mut msg = Vec::new();
        for _ in 0..(next() % 10) {
            msg.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
        }
        let mut cuts: Vec<usize> = (0..next() % 4)
            .map(|_| (next() % (msg.len() as u64 + 1)) as usize)
            .collect();
        cuts.sort_unstable();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut from = 0;
        for c in cuts.into_iter().chain([msg.len()]) {
            chunks.push(&msg[from..c]);
            from = c;
        }
        for role in [Role::Request, Role::Response] {
            let fast = run(role, &chunks, false);
            assert_eq!(
                fast,
                run(role, &chunks, true),
                "{role:?} {:?}",
                chunks
                    .iter()
                    .map(|c| String::from_utf8_lossy(c))
                    .collect::<Vec<_>>()
            );
            in_place_heads += fast.iter().filter(|e| e.contains("MessageEnd")).count();
        }
    }
    // The inputs reach the path under test.
    assert!(in_place_heads > 1000, "{in_place_heads}");
}

#[test]
fn header_text_is_checked_as_from_utf8_checks_it() {
    // ASCII, multi-byte UTF-8, and bytes that are not UTF-8, cut at every length.
    let pieces: [&[u8]; 7] = [
        b"gateway",
        b" 203.0.113.7",
        "é".as_bytes(),
        "✓".as_bytes(),
        b"\xff",
        b"\xc3",
        b"\x80",
    ];
    let mut next = crate::test_rng::xorshift(0xA5C1_1E77);
    for _ in 0..20_000 {
        let mut v = Vec::new();
        for _ in 0..next() % 8 {
            v.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
        }
        for end in 0..=v.len() {
            assert_eq!(
                utf8(&v[..end]),
                std::str::from_utf8(&v[..end]),
                "{:?}",
                &v[..end]
            );
        }
    }
}
