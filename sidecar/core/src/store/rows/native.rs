//! Rows written straight into the columns of ClickHouse's Native format: each row's fields are
//! appended to per-column byte buffers as the row arrives, and a turn's rows leave as one block
//! (the buffers keep their capacity for the next). What the spool writes and the sender sends
//! is that block as it is: no row is copied, re-read or re-encoded on the way (pure: bytes in
//! memory only).
//!
//! The layout is the one the `clickhouse` crate's `BlockWriter` sends for `INSERT ... FORMAT
//! Native` over HTTP: the number of columns and rows (varuints), then per column its name, its
//! type and its data: fixed-width values little-endian, strings as a varuint length and the
//! bytes, `Nullable(T)` as a null map (one byte per value) and then the values (zero where
//! null), `Array(T)` as cumulative end offsets (`UInt64`) and then the elements as a column.
//! `LowCardinality` is the server's business: blocks carry the plain type (as the crate's do).
use super::{
    AlertRow, AnyRow, ConnRow, EdgeJoinRow, EdgeRow, ExposureRow, HttpRow, RequestRow, WsRow,
};

/// A varuint (LEB128), as Native lengths and counts are written.
pub fn put_varuint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One column of a block being built.
#[derive(Debug)]
pub struct ColumnBuf {
    pub name: &'static str,
    pub ty: &'static str,
    /// `Array`: the cumulative end offset of every row's elements (`UInt64` each).
    offsets: Vec<u8>,
    /// Elements so far (the next end offset).
    elements: u64,
    /// `Nullable` (or `Array(Nullable)`): one byte per value, 1 = null.
    nulls: Vec<u8>,
    data: Vec<u8>,
}

impl ColumnBuf {
    fn new(name: &'static str, ty: &'static str) -> Self {
        Self {
            name,
            ty,
            offsets: Vec::new(),
            elements: 0,
            nulls: Vec::new(),
            data: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.offsets.clear();
        self.elements = 0;
        self.nulls.clear();
        self.data.clear();
    }

    /// The bytes of its values (its section of a block, after its name and type).
    fn bytes(&self) -> usize {
        self.offsets.len() + self.nulls.len() + self.data.len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        put_varuint(out, self.name.len() as u64);
        out.extend_from_slice(self.name.as_bytes());
        put_varuint(out, self.ty.len() as u64);
        out.extend_from_slice(self.ty.as_bytes());
        out.extend_from_slice(&self.offsets);
        out.extend_from_slice(&self.nulls);
        out.extend_from_slice(&self.data);
    }
}

/// A value of a Native column: its ClickHouse type and how it is appended.
pub trait NativeValue {
    const TYPE: &'static str;
    fn put(&self, col: &mut ColumnBuf);
}

impl<T: NativeValue + ?Sized> NativeValue for &T {
    const TYPE: &'static str = T::TYPE;
    fn put(&self, col: &mut ColumnBuf) {
        (**self).put(col);
    }
}

macro_rules! fixed {
    ($($t:ty => $name:literal),*) => {$(
        impl NativeValue for $t {
            const TYPE: &'static str = $name;
            fn put(&self, col: &mut ColumnBuf) {
                col.data.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
fixed!(u16 => "UInt16", u32 => "UInt32", u64 => "UInt64");

impl NativeValue for bool {
    const TYPE: &'static str = "Bool";
    fn put(&self, col: &mut ColumnBuf) {
        col.data.push(u8::from(*self));
    }
}

impl NativeValue for str {
    const TYPE: &'static str = "String";
    fn put(&self, col: &mut ColumnBuf) {
        put_varuint(&mut col.data, self.len() as u64);
        col.data.extend_from_slice(self.as_bytes());
    }
}

impl NativeValue for String {
    const TYPE: &'static str = "String";
    fn put(&self, col: &mut ColumnBuf) {
        self.as_str().put(col);
    }
}

/// ClickHouse `DateTime64(9)`: Unix nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Nanos(pub i64);

impl NativeValue for Nanos {
    const TYPE: &'static str = "DateTime64(9)";
    fn put(&self, col: &mut ColumnBuf) {
        col.data.extend_from_slice(&self.0.to_le_bytes());
    }
}

macro_rules! nullable {
    ($($t:ty => $name:literal),*) => {$(
        impl NativeValue for Option<$t> {
            const TYPE: &'static str = $name;
            fn put(&self, col: &mut ColumnBuf) {
                col.nulls.push(u8::from(self.is_none()));
                col.data.extend_from_slice(&self.unwrap_or(0).to_le_bytes());
            }
        }
    )*};
}
nullable!(u16 => "Nullable(UInt16)", u64 => "Nullable(UInt64)");

/// An `Array` column of `T`: the row's end offset, then its elements.
fn put_array<T: NativeValue>(items: impl ExactSizeIterator<Item = T>, col: &mut ColumnBuf) {
    col.elements += items.len() as u64;
    col.offsets.extend_from_slice(&col.elements.to_le_bytes());
    for item in items {
        item.put(col);
    }
}

impl NativeValue for Vec<String> {
    const TYPE: &'static str = "Array(String)";
    fn put(&self, col: &mut ColumnBuf) {
        put_array(self.iter(), col);
    }
}

impl NativeValue for Vec<Option<u16>> {
    const TYPE: &'static str = "Array(Nullable(UInt16))";
    fn put(&self, col: &mut ColumnBuf) {
        put_array(self.iter(), col);
    }
}

/// `Array(DateTime64(9))`.
#[derive(Clone, Copy, Debug)]
pub struct NanosArray<'a>(pub &'a [i64]);

impl NativeValue for NanosArray<'_> {
    const TYPE: &'static str = "Array(DateTime64(9))";
    fn put(&self, col: &mut ColumnBuf) {
        put_array(self.0.iter().map(|t| Nanos(*t)), col);
    }
}

impl From<&i64> for Nanos {
    fn from(t: &i64) -> Self {
        Nanos(*t)
    }
}

impl<'a> From<&'a Vec<i64>> for NanosArray<'a> {
    fn from(t: &'a Vec<i64>) -> Self {
        NanosArray(t)
    }
}

/// The ClickHouse type of a field (read off the accessor's return type).
fn type_of<R, T: NativeValue + ?Sized>(_: impl for<'a> Fn(&'a R) -> &'a T) -> &'static str {
    T::TYPE
}

/// A row type of one table, as Native columns.
pub trait NativeRow {
    /// The table's columns, empty, in the order the row's fields are appended.
    fn columns() -> Vec<ColumnBuf>;
    /// Appends the row's fields, one to each column.
    fn append(&self, cols: &mut [ColumnBuf]);
}

/// `native_row!(Type; field, field @ Wrap, ...)`: one column per field, named after it, in
/// order; `@ Wrap` gives the field another Native type (timestamps as [`Nanos`]).
macro_rules! native_row {
    ($ty:ty; $($name:ident $(@ $wrap:ident)?),* $(,)?) => {
        impl NativeRow for $ty {
            #[allow(
                elided_lifetimes_in_paths,
                reason = "`NanosArray` borrows; its type name does not depend on for how long"
            )]
            fn columns() -> Vec<ColumnBuf> {
                vec![$(ColumnBuf::new(
                    stringify!($name),
                    native_row!(@ty $ty, $name $(, $wrap)?),
                )),*]
            }

            fn append(&self, cols: &mut [ColumnBuf]) {
                let mut cols = cols.iter_mut();
                $(
                    if let Some(c) = cols.next() {
                        native_row!(@val self, $name $(, $wrap)?).put(c);
                    }
                )*
            }
        }
    };
    (@val $r:ident, $name:ident) => { &$r.$name };
    (@val $r:ident, $name:ident, $wrap:ident) => { $wrap::from(&$r.$name) };
    (@ty $ty:ty, $name:ident) => { type_of(|r: &$ty| &r.$name) };
    (@ty $ty:ty, $name:ident, $wrap:ident) => { <$wrap as NativeValue>::TYPE };
}

native_row!(ExposureRow;
    ts @ Nanos, node, change, source, kind, proto, address, port, port_end, scope,
    family, pid, comm, cmdline, container, netns, exposure_key, verdict, rule, severity,
    watched, detail,
);
native_row!(ConnRow;
    ts @ Nanos, node, kind, client_addr, client_port, server_addr, server_port,
    conn_start @ Nanos, latency_ns, side, pid, comm, lost_bytes, effect,
);
native_row!(HttpRow;
    ts @ Nanos, node, client_addr, client_port, server_addr, server_port,
    conn_start @ Nanos, idx, method, path, host, origin, request_id,
    x_forwarded_for, x_forwarded_proto, upgrade_websocket, connection_upgrade, status, ttfb_ns,
    total_ns, request_bytes, response_bytes, outcome,
);
native_row!(WsRow;
    ts @ Nanos, node, end_ts @ Nanos, client_addr, client_port,
    server_addr, server_port, conn_start @ Nanos, request_id, path, origin,
    duration_ns, longest_idle_ns, idle_before_end_ns, end_kind, end_from, lost_sync,
    client_text, client_binary, client_continuation, client_ping, client_pong, client_close,
    client_payload_bytes, server_text, server_binary, server_continuation, server_ping,
    server_pong, server_close, server_payload_bytes, close_from,
    close_ts @ NanosArray, close_code, close_reason,
);
native_row!(EdgeRow;
    ts @ Nanos, node, format, request_id, client, host, method, path, status,
    request_time_ns, upstream_addr, upstream_connect_ns, upstream_header_ns,
    upstream_response_ns, bytes_sent,
);
native_row!(EdgeJoinRow;
    joined, matched, reason, wire_status, wire_ttfb_ns, wire_total_ns, upgrade_requested,
    websocket, ws_duration_ns, ws_end_kind, ws_end_from, refused, hop_client,
);
/// `edge_logs` columns that are the line's ([`EdgeRow`]'s); the join's ([`EdgeJoinRow`]'s)
/// follow them.
pub(crate) const EDGE_LINE_COLUMNS: usize = 15;
native_row!(RequestRow;
    ts @ Nanos, node, request_id, matched, reason, client, host, method, path,
    edge_status, edge_request_time_ns, upstream_addr, upstream_connect_ns, upstream_header_ns,
    upstream_response_ns, wire_status, wire_ttfb_ns, wire_total_ns, upgrade_requested,
    websocket, ws_duration_ns, ws_end_kind, ws_end_from, refused, hop_client,
);
native_row!(AlertRow;
    ts @ Nanos, node, state, rule, severity, dedup_key, summary, first_move,
    fired_at @ Nanos, evidence,
);

/// The rows of one table being gathered into a Native block.
#[derive(Debug)]
pub struct Columns {
    table: usize,
    cols: Vec<ColumnBuf>,
    rows: u64,
}

impl Columns {
    /// Empty columns of table `table` (an index into [`super::TABLE_NAMES`]).
    pub fn new(table: usize) -> Self {
        let cols = match table {
            0 | 1 => ExposureRow::columns(),
            2 => ConnRow::columns(),
            3 => HttpRow::columns(),
            4 => WsRow::columns(),
            5 => {
                let mut cols = EdgeRow::columns();
                cols.extend(EdgeJoinRow::columns());
                cols
            }
            6 => RequestRow::columns(),
            _ => AlertRow::columns(),
        };
        Self {
            table,
            cols,
            rows: 0,
        }
    }

    /// Appends a row of this table. A row of another table (or a tail mark, which is no row
    /// of any table) is refused: it goes nowhere rather than into the wrong columns.
    pub fn push(&mut self, row: &AnyRow) -> bool {
        if row.table_index() != self.table {
            return false;
        }
        let cols = &mut self.cols;
        match row {
            AnyRow::Exposure(r) | AnyRow::ExposureChange(r) => r.append(cols),
            AnyRow::Conn(r) => r.append(cols),
            AnyRow::Http(r) => r.append(cols),
            AnyRow::Ws(r) => r.append(cols),
            AnyRow::Edge(r) => {
                // A line's row on its own: its join's columns empty.
                r.append(cols);
                EdgeJoinRow::default().append(&mut cols[EDGE_LINE_COLUMNS..]);
            }
            AnyRow::Request(r) => r.append(cols),
            AnyRow::Alert(r) => r.append(cols),
            AnyRow::TailMark(_) => return false,
        }
        self.rows += 1;
        true
    }

    /// Appends a line's row with its join's columns (what [`Columns::push_edge_joined`]
    /// writes straight, for the tests that hold the two together).
    #[cfg(test)]
    pub(crate) fn push_edge_with(&mut self, r: &EdgeRow, j: &EdgeJoinRow) {
        r.append(&mut self.cols);
        j.append(&mut self.cols[EDGE_LINE_COLUMNS..]);
        self.rows += 1;
    }

    /// Rows gathered since the last block.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes the gathered rows take (about what their block will).
    pub fn bytes(&self) -> usize {
        self.cols.iter().map(ColumnBuf::bytes).sum()
    }

    /// Appends the gathered rows to `out` as one Native block and starts over (keeping the
    /// buffers). Returns the rows written; nothing is written without rows (an empty block
    /// ends a Native stream).
    pub fn write_block(&mut self, out: &mut Vec<u8>) -> u64 {
        let rows = self.rows;
        if rows == 0 {
            return 0;
        }
        out.reserve(self.bytes() + self.cols.len() * 32 + 16);
        put_varuint(out, self.cols.len() as u64);
        put_varuint(out, rows);
        for c in &mut self.cols {
            c.write(out);
            c.clear();
        }
        self.rows = 0;
        rows
    }

    /// The index of the block [`Self::write_block`] would write now: its rows, then the
    /// byte length of each column's values, as varuints. With it a merge finds the columns of
    /// a block without walking its strings (see [`merge_blocks_into`]).
    pub fn write_index(&self, out: &mut Vec<u8>) {
        put_varuint(out, self.rows);
        put_varuint(out, self.cols.len() as u64);
        for c in &self.cols {
            put_varuint(out, c.bytes() as u64);
        }
    }

    /// The column names and types, in order.
    pub fn schema(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.cols.iter().map(|c| (c.name, c.ty))
    }
}

/// Reads a varuint at `at`; the value and where the next field starts.
fn varuint_at(data: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(at)?;
        at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((v, at));
        }
    }
    None
}

/// The number of columns and rows a Native block says it has (its first two varuints), if
/// `data` starts like a block of table `table`: as many columns as the table has, at least one
/// row, and the first column named as the table's first.
pub fn block_rows(table: usize, data: &[u8]) -> Option<u64> {
    let want = Columns::new(table);
    let (cols, at) = varuint_at(data, 0)?;
    let (rows, at) = varuint_at(data, at)?;
    let (name_len, at) = varuint_at(data, at)?;
    let first = want.cols.first()?.name.as_bytes();
    let name = data.get(at..at.checked_add(usize::try_from(name_len).ok()?)?)?;
    (cols == want.cols.len() as u64 && rows > 0 && name == first).then_some(rows)
}

/// How a column's values are laid out, from its type (the types [`Columns`] writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Plain(Elem),
    Array(Elem),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    Fixed(usize),
    Str,
    Nullable(usize),
}

fn fixed_width(ty: &str) -> Option<usize> {
    match ty {
        "Bool" => Some(1),
        "UInt16" => Some(2),
        "UInt32" => Some(4),
        "UInt64" | "DateTime64(9)" => Some(8),
        _ => None,
    }
}

fn elem_of(ty: &str) -> Option<Elem> {
    if ty == "String" {
        return Some(Elem::Str);
    }
    if let Some(inner) = ty
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
    {
        return fixed_width(inner).map(Elem::Nullable);
    }
    fixed_width(ty).map(Elem::Fixed)
}

fn layout_of(ty: &str) -> Option<Layout> {
    match ty.strip_prefix("Array(").and_then(|t| t.strip_suffix(')')) {
        Some(inner) => elem_of(inner).map(Layout::Array),
        None => elem_of(ty).map(Layout::Plain),
    }
}

/// `n` varuint-prefixed strings from `at`: where they end.
fn strings_end(data: &[u8], mut at: usize, n: u64) -> Option<usize> {
    for _ in 0..n {
        // Most strings are shorter than 128 bytes: a one-byte length, read here without the
        // general varuint loop (the sender walks every string of a block it merges without an index).
        at = match data.get(at) {
            Some(&len) if len < 0x80 => at + 1 + usize::from(len),
            _ => {
                let (len, next) = varuint_at(data, at)?;
                next.checked_add(usize::try_from(len).ok()?)?
            }
        };
    }
    (at <= data.len()).then_some(at)
}

/// One column of one block, located: the parts a merge concatenates.
struct Located<'a> {
    /// `Array`: the end offsets (8 bytes each) and the element count.
    offsets: &'a [u8],
    elements: u64,
    /// `Nullable` (or of the elements): the null map.
    nulls: &'a [u8],
    data: &'a [u8],
}

/// Where `n` values of `elem` layout from `at` end (strings walked).
fn values_end(data: &[u8], at: usize, n: u64, elem: Elem) -> Option<usize> {
    let n_us = usize::try_from(n).ok()?;
    let end = match elem {
        Elem::Fixed(w) => at.checked_add(n_us.checked_mul(w)?)?,
        Elem::Str => strings_end(data, at, n)?,
        Elem::Nullable(w) => at.checked_add(n_us.checked_mul(w)?.checked_add(n_us)?)?,
    };
    (end <= data.len()).then_some(end)
}

/// An array column's elements in all: its last row's end offset (0 for no rows).
fn last_offset(offsets: &[u8]) -> Option<u64> {
    match offsets.len() {
        0 => Some(0),
        n => Some(u64::from_le_bytes(
            offsets.get(n.checked_sub(8)?..)?.try_into().ok()?,
        )),
    }
}

/// Where a column's values from `at` end, found by walking them (a block without an index).
fn section_end(block: &[u8], at: usize, rows: u64, layout: Layout) -> Option<usize> {
    match layout {
        Layout::Plain(elem) => values_end(block, at, rows, elem),
        Layout::Array(elem) => {
            let end = at.checked_add(usize::try_from(rows).ok()?.checked_mul(8)?)?;
            values_end(block, end, last_offset(block.get(at..end)?)?, elem)
        }
    }
}

/// Splits a column's values (`section`: found by the block's index or by walking them) of
/// `rows` rows into their parts, checking every length the layout fixes (a string column's
/// is the index's word: a spool frame this version wrote, under a CRC).
fn split_section(section: &[u8], rows: u64, layout: Layout) -> Option<Located<'_>> {
    /// `n` values of `elem`: their null map and data.
    fn sized(data: &[u8], n: u64, elem: Elem) -> Option<(&[u8], &[u8])> {
        let n = usize::try_from(n).ok()?;
        match elem {
            Elem::Str => Some((&[], data)),
            Elem::Fixed(w) => (data.len() == n.checked_mul(w)?).then_some((&[], data)),
            Elem::Nullable(w) => {
                (data.len() == n.checked_mul(w)?.checked_add(n)?).then(|| data.split_at(n))
            }
        }
    }
    match layout {
        Layout::Plain(elem) => {
            let (nulls, data) = sized(section, rows, elem)?;
            Some(Located {
                offsets: &[],
                elements: 0,
                nulls,
                data,
            })
        }
        Layout::Array(elem) => {
            let n = usize::try_from(rows).ok()?.checked_mul(8)?;
            let offsets = section.get(..n)?;
            let elements = last_offset(offsets)?;
            let (nulls, data) = sized(&section[n..], elements, elem)?;
            Some(Located {
                offsets,
                elements,
                nulls,
                data,
            })
        }
    }
}

/// Parses one block of the columns `want` (names and types, in order): each column located,
/// by the block's index (`sizes`: each column's bytes) when it has one, else by walking the
/// values.
fn locate_block<'a>(
    block: &'a [u8],
    want: &[(&'static str, &'static str, Layout)],
    sizes: Option<&[u64]>,
) -> Option<(u64, Vec<Located<'a>>)> {
    let (cols, at) = varuint_at(block, 0)?;
    let (rows, mut at) = varuint_at(block, at)?;
    if cols != want.len() as u64 || sizes.is_some_and(|s| s.len() != want.len()) {
        return None;
    }
    let mut out = Vec::with_capacity(want.len());
    for (name, ty, layout) in want {
        for expected in [name.as_bytes(), ty.as_bytes()] {
            let (len, next) = varuint_at(block, at)?;
            let end = next.checked_add(usize::try_from(len).ok()?)?;
            if block.get(next..end)? != expected {
                return None;
            }
            at = end;
        }
        let end = match sizes {
            Some(sizes) => at.checked_add(usize::try_from(sizes[out.len()]).ok()?)?,
            None => section_end(block, at, rows, *layout)?,
        };
        out.push(split_section(block.get(at..end)?, rows, *layout)?);
        at = end;
    }
    (at == block.len()).then_some((rows, out))
}

/// A block's index as [`Columns::write_index`] wrote it: its rows and each column's bytes.
pub fn read_index(data: &[u8]) -> Option<(u64, Vec<u64>)> {
    let (rows, at) = varuint_at(data, 0)?;
    let (n, mut at) = varuint_at(data, at)?;
    // A column's byte count takes at least a byte.
    if n > data.len() as u64 {
        return None;
    }
    let mut sizes = Vec::with_capacity(usize::try_from(n).ok()?);
    for _ in 0..n {
        let (size, next) = varuint_at(data, at)?;
        sizes.push(size);
        at = next;
    }
    (at == data.len()).then_some((rows, sizes))
}

/// Several Native blocks of table `table` (as [`Columns::write_block`] wrote them) as one
/// block holding all their rows, in order, written into `out` (cleared first; its capacity
/// reused): what the server ingests best (a block per pipeline turn made it convert and squash
/// dozens of small blocks per insert). False, with `out` left empty, if a block is not one of
/// this table's (the caller then sends them as they are). `sizes`: each block's index
/// ([`read_index`]) where it has one (none past its end).
pub fn merge_blocks_into(
    table: usize,
    blocks: &[&[u8]],
    sizes: &[Option<&[u64]>],
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let merged = merge(table, blocks, sizes, out).is_some();
    if !merged {
        out.clear();
    }
    merged
}

fn merge(
    table: usize,
    blocks: &[&[u8]],
    sizes: &[Option<&[u64]>],
    out: &mut Vec<u8>,
) -> Option<()> {
    let want: Vec<(&'static str, &'static str, Layout)> = Columns::new(table)
        .schema()
        .map(|(n, t)| Some((n, t, layout_of(t)?)))
        .collect::<Option<_>>()?;
    let mut parsed = Vec::with_capacity(blocks.len());
    let mut rows = 0u64;
    let mut size = 0;
    for (i, b) in blocks.iter().enumerate() {
        let (r, cols) = locate_block(b, &want, sizes.get(i).copied().flatten())?;
        rows += r;
        size += b.len();
        parsed.push(cols);
    }
    if out.capacity() < size {
        // `out` is empty: a new buffer, not a grown one (growing copies the old capacity).
        *out = Vec::with_capacity(size);
    }
    put_varuint(out, want.len() as u64);
    put_varuint(out, rows);
    for (c, (name, ty, layout)) in want.iter().enumerate() {
        put_varuint(out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        put_varuint(out, ty.len() as u64);
        out.extend_from_slice(ty.as_bytes());
        if let Layout::Array(_) = layout {
            // End offsets count on from the blocks before.
            let mut base = 0u64;
            for block in &parsed {
                for o in block[c].offsets.chunks_exact(8) {
                    let v = u64::from_le_bytes(o.try_into().ok()?);
                    out.extend_from_slice(&(base + v).to_le_bytes());
                }
                base += block[c].elements;
            }
        }
        for block in &parsed {
            out.extend_from_slice(block[c].nulls);
        }
        for block in &parsed {
            out.extend_from_slice(block[c].data);
        }
    }
    Some(())
}

mod straight;
pub use straight::{HTTP_TABLE, REQUEST_TABLE};

#[cfg(test)]
mod tests;
