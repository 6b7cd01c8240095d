use super::*;

#[test]
fn integrity_check_rejects_other_bytes() {
    use sha2::Digest as _;
    assert!(!verify(&sha2::Sha512::digest(b"not the package")));
}

#[test]
fn cache_path_is_versioned() {
    let p = library_path(Path::new("/var/cache/edgewatch"));
    assert_eq!(
        p,
        Path::new("/var/cache/edgewatch/clickhouse/26.7.3-stable.1/libchdb.so")
    );
}

#[test]
fn generated_files_live_beside_the_data_directory() {
    let d = Path::new("/var/lib/edgewatch/clickhouse");
    assert_eq!(etc_dir(d), Path::new("/var/lib/edgewatch/clickhouse.etc"));
    assert_eq!(log_path(d), Path::new("/var/lib/edgewatch/clickhouse.log"));
}

#[test]
fn users_file_grants_one_database_and_no_sources() {
    let x = users_xml(&"ab".repeat(32), "edgewatch", false);
    assert!(x.contains("ON edgewatch.*"), "{x}");
    assert!(!x.contains("Distributed"), "{x}");
    let node = users_xml(&"ab".repeat(32), "edgewatch", true);
    assert!(node.contains("GRANT TABLE ENGINE ON Distributed"), "{node}");
    assert!(x.contains(&"ab".repeat(32)));
    let edgewatch_part = &x[x.find("<edgewatch>").expect("the user")..];
    for forbidden in [
        "*.*",
        "FILE",
        "URL",
        "S3",
        "REMOTE",
        "SOURCES",
        "ALL",
        "SYSTEM",
        "access_management>1",
    ] {
        assert!(
            !edgewatch_part.contains(forbidden),
            "{forbidden} in {edgewatch_part}"
        );
    }
}

#[test]
fn database_patterns() {
    assert!(check_database_pattern("edgewatch").is_ok());
    assert!(check_database_pattern("t_*").is_ok());
    assert!(check_database_pattern("*").is_err());
    assert!(check_database_pattern("a.b").is_err());
    assert!(check_database_pattern("a*b").is_err());
}

#[test]
fn basic_auth_rule_matches_exactly_the_user() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    // Every first password byte keeps the 14th character in g..v; other users never match
    // the 13-character prefix.
    for first in 0u8..=255 {
        let mut raw = b"edgewatch:".to_vec();
        raw.push(first);
        raw.push(b'x');
        let enc = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert!(enc.starts_with("ZWRnZXdhdGNoO"), "{enc}");
        assert!((b'g'..=b'v').contains(&enc.as_bytes()[13]), "{enc}");
    }
    for other in ["edgewatchx:a", "edgewatc:ab", "default:", "Edgewatch:a"] {
        assert!(!b64(other).starts_with("ZWRnZXdhdGNoO"), "{other}");
    }
}

#[test]
fn a_port_counts_as_ours_only_when_this_process_listens_on_it() {
    let mine = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = mine.local_addr().expect("addr").port();
    assert!(listens_here(port));
    drop(mine);
    assert!(!listens_here(port));
    // A listener of another process answers a connect but is not ours.
    let mut other = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\n\
             print(s.getsockname()[1],flush=True)\nsys.stdin.read()",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(other.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("port");
    let theirs: u16 = line.trim().parse().expect("a port");
    assert!(std::net::TcpStream::connect(("127.0.0.1", theirs)).is_ok());
    assert!(!listens_here(theirs));
    drop(other.stdin.take());
    let _ = other.wait();
}
