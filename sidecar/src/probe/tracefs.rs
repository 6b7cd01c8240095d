//! Tracepoint format files (kernel ABI): where tracefs is, and the field layout of the
//! tracepoints the probes read. The parser is pure; [`ensure_tracefs`] does the I/O.
use std::{collections::HashMap, path::Path};

use edgewatch_common::{ResetLayout, SockStateLayout};

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Errors about a tracepoint's format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("tracepoint {tracepoint}: field `{field}` is missing from its format file")]
    MissingField { tracepoint: String, field: String },
    #[error(
        "tracepoint {tracepoint}: field `{field}` has size {size}, expected {expected}; \
         this kernel's layout is not supported"
    )]
    BadSize {
        tracepoint: String,
        field: String,
        size: u32,
        expected: u32,
    },
}

/// Parses a tracepoint `format` file into field name -> offset and size. Array fields are
/// named without their `[N]` suffix. Lines that are not fields are ignored.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for (i, part) in rest.split(';').map(str::trim).enumerate() {
            if i == 0 {
                decl = Some(part);
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        let Some(name) = decl.split_whitespace().last() else {
            continue;
        };
        let name = name
            .split('[')
            .next()
            .unwrap_or(name)
            .trim_start_matches('*');
        fields.insert(name.to_owned(), Field { offset, size });
    }
    fields
}

/// The offset of `name` in a parsed format, checked to have `size` bytes.
fn field_offset(
    fields: &HashMap<String, Field>,
    tracepoint: &str,
    name: &str,
    size: u32,
) -> Result<u32, FormatError> {
    let f = fields.get(name).ok_or_else(|| FormatError::MissingField {
        tracepoint: tracepoint.into(),
        field: name.into(),
    })?;
    if f.size != size {
        return Err(FormatError::BadSize {
            tracepoint: tracepoint.into(),
            field: name.into(),
            size: f.size,
            expected: size,
        });
    }
    Ok(f.offset)
}

/// The `sock:inet_sock_set_state` layout the eBPF program needs, checked field by field.
pub fn sock_state_layout(format: &str) -> Result<SockStateLayout, FormatError> {
    let fields = parse_format(format);
    let get = |name: &str, size: u32| field_offset(&fields, "sock:inet_sock_set_state", name, size);
    Ok(SockStateLayout {
        skaddr: get("skaddr", 8)?,
        oldstate: get("oldstate", 4)?,
        newstate: get("newstate", 4)?,
        sport: get("sport", 2)?,
        dport: get("dport", 2)?,
        family: get("family", 2)?,
        protocol: get("protocol", 2)?,
        saddr: get("saddr", 4)?,
        daddr: get("daddr", 4)?,
        saddr_v6: get("saddr_v6", 16)?,
        daddr_v6: get("daddr_v6", 16)?,
        ready: 1,
    })
}

/// The layout of `tcp:tcp_send_reset` or `tcp:tcp_receive_reset`: either separate port and
/// address fields (older kernels, and `tcp_receive_reset` on 6.x) or 28-byte sockaddr fields
/// (`tcp_send_reset` on 6.x).
pub fn reset_layout(tracepoint: &str, format: &str) -> Result<ResetLayout, FormatError> {
    let fields = parse_format(format);
    let field = |name: &str, size: u32| field_offset(&fields, tracepoint, name, size);
    if fields.contains_key("sport") {
        return Ok(ResetLayout {
            mode: 1,
            sport: field("sport", 2)?,
            dport: field("dport", 2)?,
            family: field("family", 2)?,
            saddr: field("saddr", 4)?,
            daddr: field("daddr", 4)?,
            saddr_v6: field("saddr_v6", 16)?,
            daddr_v6: field("daddr_v6", 16)?,
        });
    }
    Ok(ResetLayout {
        mode: 2,
        saddr: field("saddr", 28)?,
        daddr: field("daddr", 28)?,
        ..ResetLayout::default()
    })
}

/// Makes sure tracefs is mounted at `path` (mounting it if needed) and returns whether this
/// call mounted it.
pub fn ensure_tracefs(path: &Path) -> std::io::Result<bool> {
    if path.join("events").is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(path)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs"])
        .arg(path)
        .status()?;
    if !status.success() || !path.join("events").is_dir() {
        return Err(std::io::Error::other(format!(
            "tracefs is not mounted at {} and `mount -t tracefs tracefs {}` failed ({status}); \
             inside `ip netns exec` /sys is remounted without it: use `nsenter --net=...` instead",
            path.display(),
            path.display()
        )));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Linux 6.18's format file, verbatim.
    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s ...\"
";

    #[test]
    fn layout_of_6_18() {
        let layout = sock_state_layout(FORMAT_6_18).expect("layout");
        assert_eq!(layout.skaddr, 8);
        assert_eq!((layout.oldstate, layout.newstate), (16, 20));
        assert_eq!(
            (layout.sport, layout.dport, layout.family, layout.protocol),
            (24, 26, 28, 30)
        );
        assert_eq!((layout.saddr, layout.daddr), (32, 36));
        assert_eq!((layout.saddr_v6, layout.daddr_v6), (40, 56));
        assert_eq!(layout.ready, 1);
    }

    #[test]
    fn reset_layouts_of_both_shapes() {
        // Linux 6.18's tcp_send_reset (sockaddr fields) and tcp_receive_reset (port fields).
        let send = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;";
        let l = reset_layout("tcp:tcp_send_reset", send).expect("send layout");
        assert_eq!((l.mode, l.saddr, l.daddr), (2, 32, 60));
        let recv = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;";
        let l = reset_layout("tcp:tcp_receive_reset", recv).expect("receive layout");
        assert_eq!((l.mode, l.sport, l.dport, l.family), (1, 16, 18, 20));
        assert_eq!((l.saddr_v6, l.daddr_v6), (30, 46));
        assert!(reset_layout("x", "field:int nothing;\toffset:8;\tsize:4;").is_err());
    }

    #[test]
    fn shifted_layout_is_followed() {
        // A kernel that adds a field before the addresses moves them; the offsets follow.
        let shifted = FORMAT_6_18
            .replace("offset:32;", "offset:40;")
            .replace("offset:36;", "offset:44;");
        let layout = sock_state_layout(&shifted).expect("layout");
        assert_eq!((layout.saddr, layout.daddr), (40, 44));
    }

    #[test]
    fn missing_or_resized_fields_are_named() {
        let err = sock_state_layout(&FORMAT_6_18.replace("protocol;", "proto;"))
            .expect_err("missing field");
        assert!(err.to_string().contains("`protocol`"), "{err}");
        let err = sock_state_layout(&FORMAT_6_18.replace(
            "__u16 family;\toffset:28;\tsize:2",
            "int family;\toffset:28;\tsize:4",
        ))
        .expect_err("resized");
        assert!(
            matches!(
                err,
                FormatError::BadSize {
                    size: 4,
                    expected: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(sock_state_layout("garbage\nfield:broken").is_err());
    }
}
