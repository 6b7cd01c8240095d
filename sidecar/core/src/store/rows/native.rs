//! Rows as blocks of ClickHouse's columnar Native format: pure encoding (rows in, a block
//! out), built only with the `clickhouse` feature.
use clickhouse::native::{
    builder::BlockBuilder,
    encode::{Encode, ValueWriter},
    Block, DataTypeNode,
};

use super::{
    AlertRow, AnyRow, ConnRow, EdgeRow, ExposureRow, HttpRow, RequestRow, WsRow, TABLE_NAMES,
};

/// ClickHouse `DateTime64(9)` in a Native block: Unix nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Nanos(pub i64);

fn datetime64_9() -> DataTypeNode {
    static TYPE: std::sync::OnceLock<DataTypeNode> = std::sync::OnceLock::new();
    TYPE.get_or_init(|| DataTypeNode::new("DateTime64(9)").unwrap_or(DataTypeNode::Int64))
        .clone()
}

impl Encode for Nanos {
    fn produces() -> DataTypeNode {
        datetime64_9()
    }

    fn encode(
        &self,
        writer: &mut ValueWriter<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(writer.write_fixed(&self.0.to_le_bytes())?)
    }
}

/// Why rows could not become a Native block (a bug in this file, never bad input: the
/// columns are checked against the schema by a test).
#[derive(Debug, thiserror::Error)]
#[error("building the Native block for {table}: {reason}")]
pub struct NativeError {
    pub table: &'static str,
    pub reason: String,
}

fn add_column<T: Encode>(
    b: &mut BlockBuilder,
    table: &'static str,
    name: &str,
    values: impl IntoIterator<Item = T>,
) -> Result<(), NativeError> {
    let err = |reason: String| NativeError { table, reason };
    b.upsert_column::<T>(name)
        .map_err(|e| err(format!("column {name}: {e}")))?
        .add_all(values)
        .map_err(|e| err(format!("column {name}: {e}")))?;
    Ok(())
}

/// Rows of one table as one block of ClickHouse's columnar Native format: what the server
/// ingests at the least cost (no per-row parsing). `table` names the table in errors.
pub trait NativeRow: Sized {
    fn block(table: &'static str, rows: &[&Self]) -> Result<Block, NativeError>;
}

/// `native_block!(Type; field, field = |r| expr, ...)`: one column per field, named after it,
/// in order; `= map` converts the value (timestamps to [`Nanos`]).
macro_rules! native_block {
    ($ty:ty; $($name:ident $(= $map:expr)?),* $(,)?) => {
        impl NativeRow for $ty {
            fn block(table: &'static str, rows: &[&Self]) -> Result<Block, NativeError> {
                let mut b = BlockBuilder::new();
                $( native_block!(@col b, rows, table, $name $(, $map)?); )*
                b.build().map_err(|e| NativeError {
                    table,
                    reason: e.to_string(),
                })
            }
        }
    };
    (@col $b:ident, $rows:ident, $table:ident, $name:ident) => {
        add_column(&mut $b, $table, stringify!($name), $rows.iter().map(|r| &r.$name))?
    };
    (@col $b:ident, $rows:ident, $table:ident, $name:ident, $map:expr) => {
        add_column(&mut $b, $table, stringify!($name), $rows.iter().map($map))?
    };
}

/// References to the rows of one variant (no row is moved or copied).
macro_rules! refs_of {
    ($rows:expr, $variant:ident) => {
        $rows
            .iter()
            .filter_map(|r| match r {
                AnyRow::$variant(x) => Some(x),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

/// The Native block of rows of table `table` (an index into [`TABLE_NAMES`]), read in place.
pub fn native_block(table: usize, rows: &[AnyRow]) -> Result<Block, NativeError> {
    let name = TABLE_NAMES[table];
    match table {
        0 => ExposureRow::block(name, &refs_of!(rows, Exposure)),
        1 => ExposureRow::block(name, &refs_of!(rows, ExposureChange)),
        2 => ConnRow::block(name, &refs_of!(rows, Conn)),
        3 => HttpRow::block(name, &refs_of!(rows, Http)),
        4 => WsRow::block(name, &refs_of!(rows, Ws)),
        5 => EdgeRow::block(name, &refs_of!(rows, Edge)),
        6 => RequestRow::block(name, &refs_of!(rows, Request)),
        _ => AlertRow::block(name, &refs_of!(rows, Alert)),
    }
}

native_block!(ExposureRow;
    ts = |r| Nanos(r.ts), node, change, source, kind, proto, address, port, port_end, scope,
    family, pid, comm, cmdline, container, netns, exposure_key, verdict, rule, severity,
    watched, detail,
);
native_block!(ConnRow;
    ts = |r| Nanos(r.ts), node, kind, client_addr, client_port, server_addr, server_port,
    conn_start = |r| Nanos(r.conn_start), latency_ns, side, pid, comm, lost_bytes, effect,
);
native_block!(HttpRow;
    ts = |r| Nanos(r.ts), node, client_addr, client_port, server_addr, server_port,
    conn_start = |r| Nanos(r.conn_start), idx, method, path, host, origin, request_id,
    x_forwarded_for, x_forwarded_proto, upgrade_websocket, connection_upgrade, status, ttfb_ns,
    total_ns, request_bytes, response_bytes, outcome,
);
native_block!(WsRow;
    ts = |r| Nanos(r.ts), node, end_ts = |r| Nanos(r.end_ts), client_addr, client_port,
    server_addr, server_port, conn_start = |r| Nanos(r.conn_start), request_id, path, origin,
    duration_ns, longest_idle_ns, idle_before_end_ns, end_kind, end_from, lost_sync,
    client_text, client_binary, client_continuation, client_ping, client_pong, client_close,
    client_payload_bytes, server_text, server_binary, server_continuation, server_ping,
    server_pong, server_close, server_payload_bytes, close_from,
    close_ts = |r| r.close_ts.iter().map(|t| Nanos(*t)).collect::<Vec<_>>(),
    close_code, close_reason,
);
native_block!(EdgeRow;
    ts = |r| Nanos(r.ts), node, format, request_id, client, host, method, path, status,
    request_time_ns, upstream_addr, upstream_connect_ns, upstream_header_ns,
    upstream_response_ns, bytes_sent,
);
native_block!(RequestRow;
    ts = |r| Nanos(r.ts), node, request_id, matched, reason, client, host, method, path,
    edge_status, edge_request_time_ns, upstream_addr, upstream_connect_ns, upstream_header_ns,
    upstream_response_ns, wire_status, wire_ttfb_ns, wire_total_ns, upgrade_requested,
    websocket, ws_duration_ns, ws_end_kind, ws_end_from, refused, hop_client,
);
native_block!(AlertRow;
    ts = |r| Nanos(r.ts), node, state, rule, severity, dedup_key, summary, first_move,
    fired_at = |r| Nanos(r.fired_at), evidence,
);
