//! nginx's configuration language: a tokenizer (words, quoted strings with escapes, `${var}`
//! inside words, comments, `;`, `{`, `}`) and a parser into a tree of directives that keep
//! their file and line. `include` is followed (globs too) through a [`Files`] the caller
//! provides, so reading stays at the edge. No maintained crate parses nginx's syntax with
//! positions; this follows `ngx_conf_read_token` in `src/core/ngx_conf_file.c`.
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where a directive is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord, Hash)]
pub struct Source {
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for Source {
    /// `file:line`; a JSON configuration (Caddy's) has no lines, its `file` names the object
    /// (`caddy admin 127.0.0.1:2019 /config/apps/http/...`), shown alone.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// One directive: its name, arguments (unquoted), position, and block if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub at: Source,
    pub block: Option<Vec<Directive>>,
}

/// A syntax error, with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct ParseError {
    pub at: Source,
    pub message: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

/// The longest token accepted (nginx itself has no limit; this bounds a hostile file).
const MAX_TOKEN: usize = 64 * 1024;

fn tokenize(text: &str, file: &str) -> Result<Vec<(Token, u32)>, ParseError> {
    let err = |line: u32, message: String| ParseError {
        at: Source {
            file: file.to_owned(),
            line,
        },
        message,
    };
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1u32;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            ';' => {
                out.push((Token::Semicolon, line));
                chars.next();
            }
            '{' => {
                out.push((Token::Open, line));
                chars.next();
            }
            '}' => {
                out.push((Token::Close, line));
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(err(start, format!("unterminated {quote} string"))),
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\'' | '\\')) => word.push(e),
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                                if other == '\n' {
                                    line += 1;
                                }
                            }
                            None => return Err(err(start, format!("unterminated {quote} string"))),
                        },
                        Some(q) if q == quote => break,
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            word.push(other);
                        }
                    }
                    if word.len() > MAX_TOKEN {
                        return Err(err(start, "a string longer than 64 KiB".into()));
                    }
                }
                out.push((Token::Word(word), start));
            }
            _ => {
                let start = line;
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == ';' || c == '"' && word.is_empty() {
                        break;
                    }
                    if c == '}' || c == '{' {
                        // `${name}` is a variable, not a block.
                        if c == '{' && word.ends_with('$') {
                            for c in chars.by_ref() {
                                word.push(c);
                                if c == '}' {
                                    break;
                                }
                            }
                            continue;
                        }
                        break;
                    }
                    if c == '\\' {
                        chars.next();
                        if let Some(e) = chars.next() {
                            word.push(e);
                        }
                        continue;
                    }
                    word.push(c);
                    chars.next();
                    if word.len() > MAX_TOKEN {
                        return Err(err(start, "a word longer than 64 KiB".into()));
                    }
                }
                out.push((Token::Word(word), start));
            }
        }
    }
    Ok(out)
}

/// Parses one file's text into directives (an `include` stays a directive here).
pub fn parse(text: &str, file: &str) -> Result<Vec<Directive>, ParseError> {
    let tokens = tokenize(text, file)?;
    let mut pos = 0;
    let body = parse_block(&tokens, &mut pos, file, 0)?;
    Ok(body)
}

/// Deeper nesting than this is refused (nginx's own configs nest a handful of levels).
const MAX_DEPTH: usize = 64;

fn parse_block(
    tokens: &[(Token, u32)],
    pos: &mut usize,
    file: &str,
    depth: usize,
) -> Result<Vec<Directive>, ParseError> {
    let at = |line: u32| Source {
        file: file.to_owned(),
        line,
    };
    if depth > MAX_DEPTH {
        let line = tokens.get(*pos).map(|t| t.1).unwrap_or(0);
        return Err(ParseError {
            at: at(line),
            message: format!("blocks nested deeper than {MAX_DEPTH}"),
        });
    }
    let mut out = Vec::new();
    while let Some((token, line)) = tokens.get(*pos) {
        match token {
            Token::Close => {
                if depth == 0 {
                    return Err(ParseError {
                        at: at(*line),
                        message: "unexpected \"}\"".into(),
                    });
                }
                *pos += 1;
                return Ok(out);
            }
            Token::Semicolon | Token::Open => {
                return Err(ParseError {
                    at: at(*line),
                    message: format!(
                        "unexpected \"{}\"",
                        if *token == Token::Open { "{" } else { ";" }
                    ),
                })
            }
            Token::Word(name) => {
                let line = *line;
                *pos += 1;
                let mut args = Vec::new();
                loop {
                    match tokens.get(*pos) {
                        Some((Token::Word(w), _)) => {
                            args.push(w.clone());
                            *pos += 1;
                        }
                        Some((Token::Semicolon, _)) => {
                            *pos += 1;
                            out.push(Directive {
                                name: name.clone(),
                                args,
                                at: at(line),
                                block: None,
                            });
                            break;
                        }
                        Some((Token::Open, _)) => {
                            *pos += 1;
                            let block = parse_block(tokens, pos, file, depth + 1)?;
                            out.push(Directive {
                                name: name.clone(),
                                args,
                                at: at(line),
                                block: Some(block),
                            });
                            break;
                        }
                        Some((Token::Close, l)) => {
                            return Err(ParseError {
                                at: at(*l),
                                message: format!("\"{name}\" is not terminated by \";\""),
                            })
                        }
                        None => {
                            return Err(ParseError {
                                at: at(line),
                                message: format!(
                                    "unexpected end of file: \"{name}\" is not terminated"
                                ),
                            })
                        }
                    }
                }
            }
        }
    }
    if depth > 0 {
        let line = tokens.last().map(|t| t.1).unwrap_or(0);
        return Err(ParseError {
            at: at(line),
            message: "unexpected end of file, expecting \"}\"".into(),
        });
    }
    Ok(out)
}

/// How the loader reads files: the sidecar's reads through `/proc/PID/root`, the tests' from
/// memory.
pub trait Files {
    /// The text of a file.
    fn read(&mut self, path: &Path) -> std::io::Result<String>;
    /// The files a glob names, sorted (nginx sorts them too); a plain path is itself.
    fn glob(&mut self, pattern: &Path) -> Vec<PathBuf>;
}

/// Includes followed at most this deep (nginx has no limit; a loop would never end).
const MAX_INCLUDE_DEPTH: usize = 16;

/// A whole configuration: `main` and everything it includes, the includes replaced by what
/// they hold. Files that cannot be read are errors with the including line.
pub fn load(
    main: &Path,
    prefix: &Path,
    files: &mut dyn Files,
) -> Result<Vec<Directive>, ParseError> {
    let text = files.read(main).map_err(|e| ParseError {
        at: Source {
            file: main.display().to_string(),
            line: 0,
        },
        message: format!("cannot read: {e}"),
    })?;
    let tree = parse(&text, &main.display().to_string())?;
    expand(tree, prefix, files, 0)
}

fn expand(
    tree: Vec<Directive>,
    prefix: &Path,
    files: &mut dyn Files,
    depth: usize,
) -> Result<Vec<Directive>, ParseError> {
    let mut out = Vec::with_capacity(tree.len());
    for mut d in tree {
        if d.name == "include" && d.block.is_none() {
            let Some(pattern) = d.args.first() else {
                return Err(ParseError {
                    at: d.at,
                    message: "include without a file".into(),
                });
            };
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(ParseError {
                    at: d.at,
                    message: format!("includes nested deeper than {MAX_INCLUDE_DEPTH}"),
                });
            }
            // Relative includes are relative to the configuration prefix (nginx's conf dir).
            let pattern = prefix.join(pattern);
            // A plain path must exist (nginx refuses to start otherwise); a glob may match
            // nothing.
            let paths = if pattern.to_string_lossy().contains(['*', '?', '[']) {
                files.glob(&pattern)
            } else {
                vec![pattern]
            };
            for path in paths {
                let text = files.read(&path).map_err(|e| ParseError {
                    at: d.at.clone(),
                    message: format!("include {}: {e}", path.display()),
                })?;
                let tree = parse(&text, &path.display().to_string())?;
                out.extend(expand(tree, prefix, files, depth + 1)?);
            }
            continue;
        }
        if let Some(block) = d.block.take() {
            d.block = Some(expand(block, prefix, files, depth)?);
        }
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokenize(text, "t")
            .unwrap_or_default()
            .into_iter()
            .map(|(t, _)| match t {
                Token::Word(w) => w,
                Token::Semicolon => ";".into(),
                Token::Open => "{".into(),
                Token::Close => "}".into(),
            })
            .collect()
    }

    #[test]
    fn tokens_quotes_comments_and_variables() {
        assert_eq!(
            words("log_format j escape=json '{\"id\":\"$request_id\"}'; # c { ;\nset $a \"x;y\";"),
            [
                "log_format",
                "j",
                "escape=json",
                "{\"id\":\"$request_id\"}",
                ";",
                "set",
                "$a",
                "x;y",
                ";"
            ]
        );
        assert_eq!(
            words("proxy_pass http://${backend}:18789/a;"),
            ["proxy_pass", "http://${backend}:18789/a", ";"]
        );
        assert_eq!(words("a 'it\\'s' \"q\\\"\";"), ["a", "it's", "q\"", ";"]);
        assert_eq!(
            words("location /x{return 200;}"),
            ["location", "/x", "{", "return", "200", ";", "}"]
        );
    }

    #[test]
    fn directives_keep_their_lines() {
        let text = "http {\n  server {\n    listen 443 ssl;\n\n    location / {\n      proxy_pass http://127.0.0.1:18789;\n    }\n  }\n}\n";
        let tree = parse(text, "nginx.conf").unwrap_or_default();
        let server = &tree[0].block.as_ref().map(|b| b[0].clone());
        let server = server
            .as_ref()
            .and_then(|s| s.block.clone())
            .unwrap_or_default();
        assert_eq!(server[0].name, "listen");
        assert_eq!(server[0].at.line, 3);
        let location = &server[1];
        assert_eq!((location.name.as_str(), location.at.line), ("location", 5));
        let pass = &location.block.as_ref().map(|b| b[0].clone());
        assert_eq!(
            pass.as_ref().map(|p| p.at.to_string()),
            Some("nginx.conf:6".to_owned())
        );
    }

    #[test]
    fn errors_are_positioned() {
        let e = parse("http {\n server {\n", "a.conf").err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.message.contains("expecting \"}\"")),
            "{e:?}"
        );
        let e = parse("listen 80\n}", "a.conf").err();
        assert_eq!(e.map(|e| e.at.line), Some(2));
        let e = parse("a \"open;\n", "a.conf").err();
        assert!(e.is_some_and(|e| e.message.contains("unterminated")));
        let deep = "a {".repeat(100);
        assert!(parse(&deep, "d").is_err());
        assert!(parse("}", "x").is_err());
        assert!(parse("{", "x").is_err());
    }

    struct Mem(Vec<(&'static str, &'static str)>);

    impl Files for Mem {
        fn read(&mut self, path: &Path) -> std::io::Result<String> {
            self.0
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map(|(_, t)| (*t).to_owned())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn glob(&mut self, pattern: &Path) -> Vec<PathBuf> {
            let p = pattern.display().to_string();
            let (head, tail) = p.split_once('*').unwrap_or((&p, ""));
            let mut v: Vec<PathBuf> = self
                .0
                .iter()
                .filter(|(f, _)| {
                    f.starts_with(head) && f.ends_with(tail) && (p.contains('*') || *f == p)
                })
                .map(|(f, _)| PathBuf::from(f))
                .collect();
            v.sort();
            v
        }
    }

    #[test]
    fn includes_are_followed_with_their_own_files() {
        let mut fs = Mem(vec![
            (
                "/etc/nginx/nginx.conf",
                "http {\n include mime.types;\n include /etc/nginx/sites-enabled/*;\n}\n",
            ),
            ("/etc/nginx/mime.types", "types { text/html html; }\n"),
            ("/etc/nginx/sites-enabled/b", "server {\n listen 80;\n}\n"),
            ("/etc/nginx/sites-enabled/a", "\n\nserver { listen 443; }\n"),
        ]);
        let tree = load(
            Path::new("/etc/nginx/nginx.conf"),
            Path::new("/etc/nginx"),
            &mut fs,
        )
        .unwrap_or_default();
        let http = tree[0].block.clone().unwrap_or_default();
        let names: Vec<(&str, String)> = http
            .iter()
            .map(|d| (d.name.as_str(), d.at.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("types", "/etc/nginx/mime.types:1".to_owned()),
                ("server", "/etc/nginx/sites-enabled/a:3".to_owned()),
                ("server", "/etc/nginx/sites-enabled/b:1".to_owned()),
            ]
        );
        // A missing include is an error naming the line that includes it; a glob that
        // matches nothing is not.
        let mut fs = Mem(vec![(
            "/n.conf",
            "http {\n include /nope.conf;\n include /none/*.conf;\n}\n",
        )]);
        let e = load(Path::new("/n.conf"), Path::new("/"), &mut fs).err();
        assert_eq!(e.map(|e| e.at.to_string()), Some("/n.conf:2".to_owned()));
        let mut fs = Mem(vec![("/n.conf", "http {\n include /none/*.conf;\n}\n")]);
        assert!(load(Path::new("/n.conf"), Path::new("/"), &mut fs).is_ok());
        // An include loop ends.
        let mut fs = Mem(vec![("/l.conf", "include /l.conf;\n")]);
        let e = load(Path::new("/l.conf"), Path::new("/"), &mut fs).err();
        assert!(e.is_some_and(|e| e.message.contains("deeper")));
    }

    /// Debian 12's own configuration (nginx-light, unchanged) with the runbook's Gateway site
    /// enabled beside the default one: parsed whole, includes and all, one route, one finding.
    #[test]
    fn debian_default_configuration_with_the_gateway_site() {
        macro_rules! fixture {
            ($name:literal) => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../tests/fixtures/nginx/debian/",
                    $name
                ))
            };
        }
        let mut fs = Mem(vec![
            ("/etc/nginx/nginx.conf", fixture!("nginx.conf")),
            ("/etc/nginx/mime.types", fixture!("mime.types")),
            ("/etc/nginx/proxy_params", fixture!("proxy_params")),
            (
                "/etc/nginx/modules-enabled/50-mod-http-echo.conf",
                fixture!("50-mod-http-echo.conf"),
            ),
            (
                "/etc/nginx/sites-enabled/default",
                fixture!("sites-default"),
            ),
            (
                "/etc/nginx/sites-enabled/gateway",
                fixture!("sites-gateway"),
            ),
        ]);
        let tree = load(
            Path::new("/etc/nginx/nginx.conf"),
            Path::new("/etc/nginx"),
            &mut fs,
        );
        let tree = match tree {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let routes = crate::proxy::routes::routes(&tree);
        assert_eq!(routes.len(), 1, "{routes:#?}");
        let r = &routes[0];
        assert_eq!(r.listen, ["443", "[::]:443"]);
        assert_eq!(
            r.location_at.to_string(),
            "/etc/nginx/sites-enabled/gateway:20"
        );
        assert_eq!(
            (r.targets[0].host.as_str(), r.targets[0].port),
            ("127.0.0.1", 18789)
        );
        let listeners = [(std::net::IpAddr::from([127, 0, 0, 1]), 18789)];
        let f = crate::proxy::findings(
            &routes,
            &crate::proxy::Facts {
                listeners: Some(&listeners),
                gateway_ports: &[18789],
                min_read_timeout: std::time::Duration::from_secs(600),
            },
        );
        // Debian's http-level access_log uses nginx's combined format: no request id.
        let got: Vec<(&str, String)> = f.iter().map(|f| (f.rule, f.at.to_string())).collect();
        assert_eq!(
            got,
            [(
                "config.request_id_not_logged",
                "/etc/nginx/nginx.conf:40".to_owned()
            )]
        );
    }
}
