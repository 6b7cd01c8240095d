//! Streaming HTTP/1.x message framing for one direction of a connection. Pure.
//!
//! Heads are parsed with `httparse`; bodies are never kept, only skipped by their framing
//! (Content-Length, chunked, or until close). A gap inside a body of known length costs
//! nothing; a gap inside a head or chunk framing loses sync, and the parser waits for a chunk
//! that starts like a new message (a method, or `HTTP/1.`) to resynchronise.
use std::collections::VecDeque;

use super::{redact::redact_target_text, RequestId, Text};

/// Largest head accepted; longer ones lose sync (nginx's default large buffers are 4 x 8k).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const METHODS: &[&str] = &[
    "GET ", "POST ", "PUT ", "DELETE ", "HEAD ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];

/// What a request head says (credentials never kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Text,
    pub path: Text,
    pub host: Option<Text>,
    pub origin: Option<Text>,
    pub request_id: Option<RequestId>,
    pub x_forwarded_for: Option<Text>,
    pub x_forwarded_proto: Option<Text>,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
}

/// What a response head says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
}

/// Parser output, in stream order. `offset` fields are byte offsets within the chunk fed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpEvent {
    /// The first byte of a message head.
    HeadStart,
    /// A request head was parsed: [`HttpStream::take_request`] gives it (heads wait there in
    /// order, so that the events stay small: every event pushed or moved costs its type's
    /// full size, and a head is 200 bytes).
    Request,
    Response(ResponseHead),
    /// The message (head and body) is complete: `bytes` long on the wire, head, body and
    /// framing (bytes never seen inside a body of known length included).
    MessageEnd {
        bytes: u64,
    },
    /// The stream switched protocols (after a 101, or a 2xx to CONNECT); the rest of the
    /// chunk, from `offset`, belongs to the new protocol.
    Upgraded {
        offset: usize,
    },
    /// Sync lost: this many bytes could not be framed.
    Lost {
        bytes: u64,
        why: &'static str,
    },
    /// A new message start was found after a loss.
    Resynced,
    /// The error code of a small JSON error body (its `type` or `code` string), before the
    /// message's end: why an upstream refused, e.g. `proxy_attribution_required`.
    ErrorCode(String),
}

/// Bodies this small (or smaller) of 4xx/5xx JSON responses are looked into for a code.
const PEEK_BODY_MAX: u64 = 4096;
/// Bytes of such a body kept while looking (only the code is kept after).
const PEEK_BYTES: usize = 512;

/// The value of the first `"type"` or `"code"` string key in `body` (a JSON error body),
/// when it looks like a code: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok().or_else(|| {
        // Cut in the middle of a character: the valid prefix.
        std::str::from_utf8(&body[..body.len().saturating_sub(3)]).ok()
    })?;
    ["\"type\"", "\"code\""].iter().find_map(|key| {
        let at = text.find(key)? + key.len();
        let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
        let value = rest.strip_prefix('"')?;
        let end = value.find('"')?;
        let code = &value[..end];
        (!code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
        .then(|| code.to_owned())
    })
}

/// Which kind of messages this direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Request,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(ChunkState),
    UntilClose,
    Upgraded,
    Lost,
}

/// What the request said about the response to come, for response framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub head_request: bool,
    pub connect_request: bool,
}

/// One direction's HTTP parser.
#[derive(Debug)]
pub struct HttpStream {
    role: Role,
    state: State,
    buf: Vec<u8>,
    expectations: VecDeque<Expectation>,
    /// The start of a small error body being looked into (bounded: [`PEEK_BYTES`]).
    peek: Option<Vec<u8>>,
    /// Bytes of the current message so far (from its first head byte).
    msg_bytes: u64,
    /// Request heads parsed and not yet taken, one per [`HttpEvent::Request`].
    requests: VecDeque<RequestHead>,
}

/// The headers a head is read for, found in one pass over them (a pass per header name cost
/// more than the parse itself). Values borrow the head; the first of a repeated header counts,
/// and a token counts in any of the repeats.
#[derive(Default)]
struct Headers<'h> {
    host: Option<&'h [u8]>,
    origin: Option<&'h [u8]>,
    request_id: Option<&'h [u8]>,
    x_forwarded_for: Option<&'h [u8]>,
    x_forwarded_proto: Option<&'h [u8]>,
    content_type: Option<&'h [u8]>,
    content_length: Option<&'h [u8]>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    chunked: bool,
}

impl<'h> Headers<'h> {
    fn scan(headers: &[httparse::Header<'h>]) -> Self {
        let mut found = Self::default();
        for h in headers {
            let name = h.name.as_bytes();
            let is = |want: &str| name_is(name, want.as_bytes());
            let first = |slot: &mut Option<&'h [u8]>| {
                slot.get_or_insert(h.value);
            };
            // By length first: most names are ruled out without a comparison.
            match name.len() {
                4 if is("host") => first(&mut found.host),
                6 if is("origin") => first(&mut found.origin),
                7 if is("upgrade") => found.upgrade_websocket |= has_token(h.value, "websocket"),
                10 if is("connection") => {
                    found.connection_upgrade |= has_token(h.value, "upgrade");
                }
                12 if is("x-request-id") => first(&mut found.request_id),
                12 if is("content-type") => first(&mut found.content_type),
                14 if is("content-length") => first(&mut found.content_length),
                15 if is("x-forwarded-for") => first(&mut found.x_forwarded_for),
                17 if is("x-forwarded-proto") => first(&mut found.x_forwarded_proto),
                17 if is("transfer-encoding") => found.chunked |= has_token(h.value, "chunked"),
                _ => {}
            }
        }
        found
    }

    /// Body framing: chunked, a length, or none given.
    fn framing(&self) -> Result<Option<State>, &'static str> {
        if self.chunked {
            return Ok(Some(State::Chunked(ChunkState::Size)));
        }
        match self.content_length {
            Some(v) => utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|n| Some(if n == 0 { State::Head } else { State::Body(n) }))
                .ok_or("bad content-length"),
            None => Ok(None),
        }
    }
}

/// Whether a header name is `want` (lower-case letters, digits and '-') in any case, eight
/// bytes at a time. httparse passes only token characters in names, and OR-ing 0x20 into a
/// token character lowers a letter, leaves a digit or '-' as it is, and makes nothing else
/// into a letter, a digit or '-': the comparison is exact.
fn name_is(name: &[u8], want: &[u8]) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    fn word(s: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    }
    if name.len() != want.len() {
        return false;
    }
    if name.len() < 8 {
        return name.iter().zip(want).all(|(a, b)| a | 0x20 == *b);
    }
    let mut at = 0;
    while at + 8 < name.len() {
        if word(name, at) | LOWER != word(want, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes (overlapping the word before when the length is no multiple).
    word(name, name.len() - 8) | LOWER == word(want, name.len() - 8)
}

/// A header's value as kept in a record: trimmed, and lossily decoded if it is not UTF-8.
fn text(value: Option<&[u8]>) -> Option<Text> {
    trimmed(value, |v| Text::from(v))
}

/// An X-Request-Id value, trimmed: inline up to 40 bytes (see `RequestId`).
fn request_id(value: Option<&[u8]>) -> Option<RequestId> {
    trimmed(value, RequestId::new)
}

/// A header value without the whitespace around it (ASCII, as HTTP's optional whitespace is),
/// made into `T`: read in place when it is UTF-8 (the common case), else through a lossy copy.
fn trimmed<T>(value: Option<&[u8]>, make: impl Fn(&str) -> T) -> Option<T> {
    value.map(|v| {
        let v = v.trim_ascii();
        match utf8(v) {
            Ok(v) => make(v),
            Err(_) => make(&String::from_utf8_lossy(v)),
        }
    })
}

/// `std::str::from_utf8`, ASCII (nearly every header value) checked first: a word at a time,
/// where the validation walks a value of a few dozen bytes byte by byte (it was ~120
/// instructions a value, four or five values a request).
fn utf8(v: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if v.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(v) })
    } else {
        std::str::from_utf8(v)
    }
}

/// Whether a comma-separated header value lists `token` (ASCII, case-insensitive). Read in
/// place: tokens are ASCII, so a value that is not UTF-8 is compared byte-wise, no copy.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    // SIMD substring search (a byte-by-byte window scan was the parser's largest self cost),
    // with its searcher built once.
    static END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    END.find(&buf[start..]).map(|p| start + p + 4)
}

impl HttpStream {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            state: State::Head,
            buf: Vec::new(),
            expectations: VecDeque::new(),
            peek: None,
            msg_bytes: 0,
            requests: VecDeque::new(),
        }
    }

    /// The head of the oldest [`HttpEvent::Request`] not yet taken.
    pub fn take_request(&mut self) -> Option<RequestHead> {
        self.requests.pop_front()
    }

    /// A request was seen; the response parser frames its answer with this.
    pub fn expect(&mut self, e: Expectation) {
        self.expectations.push_back(e);
    }

    pub fn is_upgraded(&self) -> bool {
        self.state == State::Upgraded
    }

    /// Whether `data` starts like a message (or is a prefix of such a start).
    fn looks_like_start(&self, data: &[u8]) -> bool {
        let starts = |m: &[u8]| {
            if data.len() >= m.len() {
                data.starts_with(m)
            } else {
                m.starts_with(data)
            }
        };
        match self.role {
            Role::Request => METHODS.iter().any(|m| starts(m.as_bytes())),
            Role::Response => starts(b"HTTP/1."),
        }
    }

    /// Feeds stream bytes; events go to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<HttpEvent>) {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            match self.state.clone() {
                State::Upgraded => return,
                State::Lost => {
                    if pos == 0 && self.looks_like_start(rest) {
                        out.push(HttpEvent::Resynced);
                        self.state = State::Head;
                        self.buf.clear();
                        continue;
                    }
                    return;
                }
                State::UntilClose => {
                    self.msg_bytes += rest.len() as u64;
                    return;
                }
                State::Body(n) => {
                    let take = (n.min(rest.len() as u64)) as usize;
                    if let Some(p) = self.peek.as_mut() {
                        let room = PEEK_BYTES.saturating_sub(p.len()).min(take);
                        p.extend_from_slice(&rest[..room]);
                    }
                    pos += take;
                    self.msg_bytes += take as u64;
                    if n - take as u64 == 0 {
                        self.state = State::Head;
                        if let Some(code) = self.peek.take().and_then(|p| error_code(&p)) {
                            out.push(HttpEvent::ErrorCode(code));
                        }
                        self.end_message(out);
                    } else {
                        self.state = State::Body(n - take as u64);
                    }
                }
                State::Chunked(cs) => match self.chunked(cs, rest, out) {
                    Ok(used) => pos += used,
                    Err(why) => {
                        self.lose(rest.len() as u64, why, out);
                        return;
                    }
                },
                State::Head => {
                    if self.buf.is_empty() {
                        // Blank lines between messages are allowed (RFC 9112 2.2).
                        let skip = rest
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        if skip > 0 {
                            pos += skip;
                            continue;
                        }
                        if !self.looks_like_start(rest) {
                            self.lose(rest.len() as u64, "not an HTTP message start", out);
                            return;
                        }
                        out.push(HttpEvent::HeadStart);
                        self.msg_bytes = 0;
                    }
                    let before = self.buf.len();
                    // The whole head in this chunk (the common case): parsed where it lies,
                    // httparse finding its end on the way (no search for the end first).
                    let in_place = if before == 0 && !find_end_first() {
                        self.parse_head(rest, false, out)
                    } else {
                        Ok(0)
                    };
                    let (end, parsed) = match in_place {
                        Ok(0) => {
                            let Some(end) = find_head_end_in(&self.buf, rest) else {
                                if before + rest.len() > MAX_HEAD {
                                    self.lose((before + rest.len()) as u64, "head too large", out);
                                    return;
                                }
                                self.buf.extend_from_slice(rest);
                                self.msg_bytes += rest.len() as u64;
                                return;
                            };
                            // `end` counts bytes of `rest` that complete the head.
                            self.msg_bytes += end as u64;
                            let parsed = if before == 0 {
                                self.parse_head(&rest[..end], true, out)
                            } else {
                                self.buf.extend_from_slice(&rest[..end]);
                                let head = std::mem::take(&mut self.buf);
                                let parsed = self.parse_head(&head, true, out);
                                // Put back empty, its capacity kept for the next split head.
                                self.buf = head;
                                self.buf.clear();
                                parsed
                            };
                            (end, parsed.map(|_| ()).map_err(|(_, why)| why))
                        }
                        Ok(len) => (len, Ok(())),
                        Err((len, why)) => (len, Err(why)),
                    };
                    pos += end;
                    if let Err(why) = parsed {
                        self.lose((before + end) as u64, why, out);
                        return;
                    }
                    if self.state == State::Upgraded {
                        out.push(HttpEvent::Upgraded { offset: pos });
                        return;
                    }
                }
            }
        }
    }

    /// Bytes of body (or of the current chunk) still to come that no parsing needs: a gap of
    /// that length changes nothing. `None` when the parser is elsewhere or looks into the
    /// body (a small error body).
    pub fn opaque_ahead(&self) -> Option<u64> {
        if self.peek.is_some() {
            return None;
        }
        match self.state {
            State::Body(n) | State::Chunked(ChunkState::Data(n)) => Some(n),
            _ => None,
        }
    }

    /// Bytes that were never seen.
    pub fn gap(&mut self, len: u64, out: &mut Vec<HttpEvent>) {
        // A body with a hole is not looked into.
        self.peek = None;
        match self.state {
            State::Body(n) if len <= n => {
                self.msg_bytes += len;
                self.state = if n == len {
                    self.end_message(out);
                    State::Head
                } else {
                    State::Body(n - len)
                };
            }
            State::Chunked(ChunkState::Data(n)) if len <= n => {
                self.msg_bytes += len;
                self.state = State::Chunked(if n == len {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(n - len)
                });
            }
            State::UntilClose => self.msg_bytes += len,
            State::Upgraded => {}
            State::Lost => out.push(HttpEvent::Lost {
                bytes: len,
                why: "bytes missing while out of sync",
            }),
            _ => self.lose(len, "bytes missing inside message framing", out),
        }
    }

    fn lose(&mut self, bytes: u64, why: &'static str, out: &mut Vec<HttpEvent>) {
        self.state = State::Lost;
        self.peek = None;
        self.buf.clear();
        out.push(HttpEvent::Lost { bytes, why });
    }

    fn chunked(
        &mut self,
        cs: ChunkState,
        rest: &[u8],
        out: &mut Vec<HttpEvent>,
    ) -> Result<usize, &'static str> {
        match cs {
            ChunkState::Data(n) => {
                let take = (n.min(rest.len() as u64)) as usize;
                self.msg_bytes += take as u64;
                self.state = State::Chunked(if n == take as u64 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(n - take as u64)
                });
                Ok(take)
            }
            ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailers => {
                let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                    if self.buf.len() + rest.len() > 4096 {
                        return Err("chunk line too long");
                    }
                    self.buf.extend_from_slice(rest);
                    self.msg_bytes += rest.len() as u64;
                    return Ok(rest.len());
                };
                self.msg_bytes += (nl + 1) as u64;
                self.buf.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.buf);
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches('\r');
                self.state = match cs {
                    ChunkState::DataEnd => {
                        if !line.is_empty() {
                            return Err("chunk data not followed by CRLF");
                        }
                        State::Chunked(ChunkState::Size)
                    }
                    ChunkState::Size => {
                        let size_text = line.split(';').next().unwrap_or("").trim();
                        let size =
                            u64::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
                        if size == 0 {
                            State::Chunked(ChunkState::Trailers)
                        } else {
                            State::Chunked(ChunkState::Data(size))
                        }
                    }
                    _ => {
                        if line.is_empty() {
                            self.end_message(out);
                            State::Head
                        } else {
                            State::Chunked(ChunkState::Trailers)
                        }
                    }
                };
                Ok(nl + 1)
            }
        }
    }

    /// Parses the head at the start of `data` and returns its length.
    ///
    /// `whole`: `data` is the head, exactly (its end was found first). Otherwise `data` may go
    /// on past the head: httparse finds the head's end as it parses, and `Ok(0)` says the head
    /// is not whole in `data`, or does not end in CRLF CRLF (where the search for that end
    /// would look further), with nothing done: the caller then looks for the end itself, so
    /// both ways take the same bytes as the head. That head's bytes count into the message
    /// here (the caller counted a whole one). An error carries the head's length.
    fn parse_head(
        &mut self,
        data: &[u8],
        whole: bool,
        out: &mut Vec<HttpEvent>,
    ) -> Result<usize, (usize, &'static str)> {
        // Left uninitialised: httparse writes what it parses (zeroing 100 headers cost more
        // than parsing a typical head).
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let (len, interpreted) =
            match self.role {
                Role::Request => {
                    let mut req = httparse::Request::new(&mut []);
                    let status = req.parse_with_uninit_headers(data, &mut headers);
                    let len = match self.take_head(
                        status,
                        data,
                        whole,
                        ["incomplete request head", "malformed request head"],
                    ) {
                        Ok(len) => len,
                        Err(done) => return done,
                    };
                    (len, self.request_head(&req, out))
                }
                Role::Response => {
                    let mut resp = httparse::Response::new(&mut []);
                    let status = httparse::ParserConfig::default()
                        .parse_response_with_uninit_headers(&mut resp, data, &mut headers);
                    let len = match self.take_head(
                        status,
                        data,
                        whole,
                        ["incomplete response head", "malformed response head"],
                    ) {
                        Ok(len) => len,
                        Err(done) => return done,
                    };
                    (len, self.response_head(&resp, out))
                }
            };
        interpreted.map(|()| len).map_err(|why| (len, why))
    }

    /// The head's length from httparse's answer on `data` (see [`Self::parse_head`]), counted
    /// into the message when parsed in place. `Err` holds what `parse_head` returns at once:
    /// `Ok(0)` when not `whole` and the head is not complete in `data` or does not end in
    /// CRLF CRLF; an error when a whole head is one httparse does not take.
    fn take_head(
        &mut self,
        status: httparse::Result<usize>,
        data: &[u8],
        whole: bool,
        [incomplete, malformed]: [&'static str; 2],
    ) -> Result<usize, Result<usize, (usize, &'static str)>> {
        match (status, whole) {
            (Ok(httparse::Status::Complete(_)), true) => Ok(data.len()),
            (Ok(httparse::Status::Complete(n)), false) if data[..n].ends_with(b"\r\n\r\n") => {
                self.msg_bytes += n as u64;
                Ok(n)
            }
            (_, false) => Err(Ok(0)),
            (Ok(httparse::Status::Partial), true) => Err(Err((data.len(), incomplete))),
            (Err(_), true) => Err(Err((data.len(), malformed))),
        }
    }

    fn request_head(
        &mut self,
        req: &httparse::Request<'_, '_>,
        out: &mut Vec<HttpEvent>,
    ) -> Result<(), &'static str> {
        let method = Text::from(req.method.unwrap_or(""));
        let found = Headers::scan(req.headers);
        let parsed = RequestHead {
            path: redact_target_text(req.path.unwrap_or("")),
            host: text(found.host),
            origin: text(found.origin),
            request_id: request_id(found.request_id),
            x_forwarded_for: text(found.x_forwarded_for),
            x_forwarded_proto: text(found.x_forwarded_proto),
            upgrade_websocket: found.upgrade_websocket,
            connection_upgrade: found.connection_upgrade,
            method,
        };
        // Requests without framing headers have no body.
        let next = found.framing()?.unwrap_or(State::Head);
        self.requests.push_back(parsed);
        out.push(HttpEvent::Request);
        if next == State::Head {
            self.end_message(out);
        }
        self.state = next;
        Ok(())
    }

    fn response_head(
        &mut self,
        resp: &httparse::Response<'_, '_>,
        out: &mut Vec<HttpEvent>,
    ) -> Result<(), &'static str> {
        let status = resp.code.unwrap_or(0);
        let found = Headers::scan(resp.headers);
        out.push(HttpEvent::Response(ResponseHead { status }));
        if status == 101 {
            self.expectations.pop_front();
            self.state = State::Upgraded;
            return Ok(());
        }
        if (100..200).contains(&status) {
            // Interim response: the final one follows, for the same request.
            self.state = State::Head;
            return Ok(());
        }
        let expectation = self.expectations.pop_front();
        if expectation.is_some_and(|e| e.connect_request) && (200..300).contains(&status) {
            self.state = State::Upgraded;
            return Ok(());
        }
        let no_body = expectation.is_some_and(|e| e.head_request) || status == 204 || status == 304;
        self.state = if no_body {
            State::Head
        } else {
            found.framing()?.unwrap_or(State::UntilClose)
        };
        // A small JSON error body says why (only its code is kept).
        self.peek = match self.state {
            State::Body(n)
                if status >= 400
                    && n <= PEEK_BODY_MAX
                    && found.content_type.is_some_and(|t| {
                        memchr::memmem::find(&t.to_ascii_lowercase(), b"json").is_some()
                    }) =>
            {
                Some(Vec::with_capacity(PEEK_BYTES.min(n as usize)))
            }
            _ => None,
        };
        if self.state == State::Head {
            self.end_message(out);
        }
        Ok(())
    }

    fn end_message(&mut self, out: &mut Vec<HttpEvent>) {
        out.push(HttpEvent::MessageEnd {
            bytes: self.msg_bytes,
        });
        self.msg_bytes = 0;
    }

    /// The connection closed: a body delimited by the close ends here.
    pub fn close(&mut self, out: &mut Vec<HttpEvent>) {
        if self.state == State::UntilClose {
            self.end_message(out);
            self.state = State::Head;
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set this to run the way every head went before heads were parsed in place (its
    /// end searched for first), to hold both ways equal.
    static FIND_END_FIRST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn find_end_first() -> bool {
    FIND_END_FIRST.get()
}

#[cfg(not(test))]
#[inline(always)]
fn find_end_first() -> bool {
    false
}

/// Where the head that `buf` started ends within `rest` (bytes of `rest` to take).
fn find_head_end_in(buf: &[u8], rest: &[u8]) -> Option<usize> {
    if buf.is_empty() {
        return find_head_end(rest, 0);
    }
    // The terminator may straddle the boundary: look at the last 3 bytes of buf + rest.
    let tail_len = buf.len().min(3);
    let mut joined = buf[buf.len() - tail_len..].to_vec();
    joined.extend_from_slice(&rest[..rest.len().min(4096)]);
    if let Some(end) = find_head_end(&joined, 0) {
        return Some(end - tail_len);
    }
    find_head_end(rest, 0)
}

#[cfg(test)]
mod tests;
