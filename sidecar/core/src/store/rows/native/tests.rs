use super::*;

fn merge_blocks(table: usize, blocks: &[&[u8]]) -> Option<Vec<u8>> {
    merge_indexed(table, blocks, &[])
}

fn merge_indexed(table: usize, blocks: &[&[u8]], sizes: &[Option<&[u64]>]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    merge_blocks_into(table, blocks, sizes, &mut out).then_some(out)
}

fn column_bytes<T: NativeValue>(name: &'static str, values: &[T]) -> Vec<u8> {
    let mut col = ColumnBuf::new(name, T::TYPE);
    for v in values {
        v.put(&mut col);
    }
    let mut out = Vec::new();
    col.write(&mut out);
    out
}

#[test]
fn values_are_laid_out_as_the_native_format_says() {
    // Name and type as strings, then the values.
    assert_eq!(
        column_bytes("p", &[7u16, 0x0102]),
        [&[1, b'p', 6][..], b"UInt16", &[7, 0, 2, 1]].concat()
    );
    // Strings: a varuint length each (two bytes from 128 on).
    let long = "x".repeat(200);
    assert_eq!(
        column_bytes("s", &["ab".to_owned(), long.clone()]),
        [
            &[1, b's', 6][..],
            b"String",
            &[2, b'a', b'b', 0xc8, 0x01],
            long.as_bytes()
        ]
        .concat()
    );
    // Nullable: the null map first, then every value (zero where null).
    assert_eq!(
        column_bytes("n", &[Some(5u64), None]),
        [
            &[1, b'n', 16][..],
            b"Nullable(UInt64)",
            &[0, 1],
            &5u64.to_le_bytes(),
            &0u64.to_le_bytes()
        ]
        .concat()
    );
    // Arrays: the cumulative end offsets, then the elements as a column of their own.
    assert_eq!(
        column_bytes("a", &[vec![Some(1000u16), None], vec![], vec![Some(1)]]),
        [
            &[1, b'a', 23][..],
            b"Array(Nullable(UInt16))",
            &2u64.to_le_bytes(),
            &2u64.to_le_bytes(),
            &3u64.to_le_bytes(),
            &[0, 1, 0],
            &[0xe8, 0x03, 0, 0, 1, 0]
        ]
        .concat()
    );
    assert_eq!(
        column_bytes("t", &[NanosArray(&[-1, 2])]),
        [
            &[1, b't', 20][..],
            b"Array(DateTime64(9))",
            &2u64.to_le_bytes(),
            &(-1i64).to_le_bytes(),
            &2i64.to_le_bytes()
        ]
        .concat()
    );
    assert_eq!(
        column_bytes("b", &[true, false]),
        [&[1, b'b', 4][..], b"Bool", &[1, 0]].concat()
    );
}

/// Blocks merged are the one block all their rows would have made: every table's column
/// kinds (arrays of nullable values and of strings in ws_sessions).
#[test]
fn blocks_merged_are_one_block_of_all_their_rows() {
    let ws = |i: usize| {
        AnyRow::Ws(WsRow {
            ts: i as i64,
            node: "n".into(),
            end_ts: 2,
            client_addr: "127.0.0.1".into(),
            client_port: 4000,
            server_addr: "127.0.0.1".into(),
            server_port: 18789,
            conn_start: 1,
            request_id: format!("r{i}"),
            path: "/ws".repeat(i * 20),
            origin: String::new(),
            duration_ns: 5,
            longest_idle_ns: 1,
            idle_before_end_ns: 1,
            end_kind: "close_handshake".into(),
            end_from: "client".into(),
            lost_sync: i.is_multiple_of(2),
            client_text: 1,
            client_binary: 0,
            client_continuation: 0,
            client_ping: 0,
            client_pong: 0,
            client_close: 1,
            client_payload_bytes: 10,
            server_text: 2,
            server_binary: 0,
            server_continuation: 0,
            server_ping: 0,
            server_pong: 0,
            server_close: 1,
            server_payload_bytes: 20,
            close_from: (0..i % 3).map(|k| format!("side{k}")).collect(),
            close_ts: (0..i % 3).map(|k| k as i64).collect(),
            close_code: (0..i % 3).map(|k| (k != 1).then_some(1000)).collect(),
            close_reason: (0..i % 3).map(|_| "bye".into()).collect(),
        })
    };
    let rows: Vec<AnyRow> = (0..10).map(ws).collect();
    let mut blocks = Vec::new();
    let mut indexes = Vec::new();
    for chunk in rows.chunks(4) {
        let mut cols = Columns::new(4);
        for r in chunk {
            cols.push(r);
        }
        let mut index = Vec::new();
        cols.write_index(&mut index);
        let mut b = Vec::new();
        cols.write_block(&mut b);
        blocks.push(b);
        indexes.push(read_index(&index).expect("an index reads back"));
    }
    let mut all = Columns::new(4);
    for r in &rows {
        all.push(r);
    }
    let mut want = Vec::new();
    all.write_block(&mut want);
    let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
    assert_eq!(merge_blocks(4, &refs), Some(want.clone()));
    // By the blocks' indexes (all, or some), the same block.
    assert_eq!(indexes[0].0, 4, "the index's rows");
    let sizes: Vec<Option<&[u64]>> = indexes.iter().map(|(_, s)| Some(s.as_slice())).collect();
    assert_eq!(merge_indexed(4, &refs, &sizes), Some(want.clone()));
    let some = [None, sizes[1], None];
    assert_eq!(merge_indexed(4, &refs, &some), Some(want.clone()));
    // An index that is not the block's: a byte moved from one column to the next, or any
    // column one byte longer, is refused, not misread.
    for c in 0..indexes[1].1.len() {
        let mut moved = indexes[1].1.clone();
        moved[c] += 1;
        let longer = moved.clone();
        let bad = [sizes[0], Some(longer.as_slice()), sizes[2]];
        assert_eq!(merge_indexed(4, &refs, &bad), None, "column {c} one longer");
        if c + 1 < moved.len() && moved[c + 1] > 0 {
            moved[c + 1] -= 1;
            let bad = [sizes[0], Some(moved.as_slice()), sizes[2]];
            assert_eq!(
                merge_indexed(4, &refs, &bad),
                None,
                "a byte moved past column {c}"
            );
        }
    }
    // An index of another block (another row count) is refused too.
    let other = [Some(indexes[2].1.as_slice()), None, None];
    assert_eq!(merge_indexed(4, &refs, &other), None);
    // One block merges into itself; a block of another table, or cut short, does not.
    assert_eq!(merge_blocks(4, &[&want]), Some(want.clone()));
    assert_eq!(merge_blocks(3, &refs), None);
    assert_eq!(merge_blocks(4, &[&want[..want.len() - 1]]), None);
    // Cut anywhere (inside a string's length or its bytes included): refused, not misread.
    for cut in 0..want.len() {
        assert_eq!(
            merge_blocks(4, &[&blocks[0], &want[..cut]]),
            None,
            "cut at {cut}"
        );
    }
    // Every table's columns have a layout the merge knows.
    for table in 0..8 {
        assert!(
            Columns::new(table)
                .schema()
                .all(|(_, t)| layout_of(t).is_some()),
            "table {table}"
        );
    }
}

#[test]
fn a_block_counts_its_columns_and_rows_and_is_checked_by_its_first_column() {
    let mut cols = Columns::new(7);
    let alert = AlertRow {
        ts: 1,
        node: "n".into(),
        state: "firing".into(),
        rule: "r".into(),
        severity: "warning".into(),
        dedup_key: "k".into(),
        summary: "s".into(),
        first_move: "f".into(),
        fired_at: 1,
        evidence: "{}".into(),
    };
    for _ in 0..300 {
        assert!(cols.push(&AnyRow::Alert(alert.clone())));
    }
    let mut out = Vec::new();
    assert_eq!(cols.write_block(&mut out), 300);
    // 10 columns, 300 rows (a two-byte varuint), then the first column's name.
    assert_eq!(&out[..6], &[10, 0xac, 0x02, 2, b't', b's']);
    assert_eq!(block_rows(7, &out), Some(300));
    assert_eq!(block_rows(5, &out), None, "not a block of edge_logs");
    assert_eq!(block_rows(7, &out[..2]), None, "cut short");
    assert_eq!(block_rows(7, &[10, 0]), None, "no rows");
}
