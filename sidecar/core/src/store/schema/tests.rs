use super::*;

fn opts(cluster: Option<&str>) -> SchemaOptions {
    SchemaOptions {
        database: "ew".into(),
        ttl_days: 14,
        cluster: cluster.map(str::to_owned),
        per_node: false,
    }
}

#[test]
fn single_node_ddl_is_idempotent_and_complete() {
    let m = opts(None).migrations();
    let all: Vec<&String> = m.iter().flat_map(|m| &m.statements).collect();
    for s in &all {
        assert!(s.contains("IF NOT EXISTS"), "not idempotent: {s}");
        assert!(!s.contains("ON CLUSTER"), "{s}");
    }
    for t in TABLES {
        let ddl = all
            .iter()
            .find(|s| s.contains(&format!("`ew`.`{}`\n", t.name)))
            .unwrap_or_else(|| panic!("no DDL for {}", t.name));
        assert!(ddl.contains("PARTITION BY toYYYYMMDD(ts)"), "{ddl}");
        assert!(
            ddl.contains("TTL toDateTime(ts) + INTERVAL 14 DAY"),
            "{ddl}"
        );
        assert!(ddl.contains("non_replicated_deduplication_window"), "{ddl}");
        assert!(ddl.contains("ENGINE = MergeTree()"), "{ddl}");
    }
    let http = all
        .iter()
        .find(|s| s.contains("`ew`.`http_exchanges`\n"))
        .expect("http ddl");
    assert!(
        http.contains("INDEX `idx_request_id` `request_id` TYPE bloom_filter"),
        "{http}"
    );
    assert!(http.contains("`method` LowCardinality(String)"), "{http}");
    assert!(
        all.iter().any(|s| s.contains("MATERIALIZED VIEW IF NOT EXISTS `ew`.`requests_request_index_mv` TO `ew`.`request_index`")),
        "lookup view"
    );
}

#[test]
fn cluster_ddl_is_replicated_and_distributed() {
    let o = opts(Some("prod"));
    let all: Vec<String> = o
        .migrations()
        .into_iter()
        .flat_map(|m| m.statements)
        .collect();
    for s in &all {
        assert!(s.contains("ON CLUSTER `prod`"), "missing ON CLUSTER: {s}");
    }
    let local = all
        .iter()
        .find(|s| s.contains("`ew`.`conn_events_local` ON CLUSTER"))
        .expect("local table");
    assert!(
        local.contains(
            "ReplicatedMergeTree('/clickhouse/tables/{shard}/ew/conn_events_local', '{replica}')"
        ),
        "{local}"
    );
    assert!(!local.contains("non_replicated_deduplication_window"));
    let dist = all
        .iter()
        .find(|s| s.contains("`ew`.`conn_events` ON CLUSTER"))
        .expect("distributed table");
    assert!(
        dist.contains("AS `ew`.`conn_events_local`")
            && dist.contains("Distributed('prod', 'ew', 'conn_events_local', cityHash64(client_addr, client_port))"),
        "{dist}"
    );
    let mv = all
        .iter()
        .find(|s| s.contains("`http_exchanges_request_index_mv`"))
        .expect("view");
    assert!(
        mv.contains("TO `ew`.`request_index_local`")
            && mv.contains("FROM `ew`.`http_exchanges_local`"),
        "{mv}"
    );
    assert!(o.migrations_table()[1].contains("ReplicatedReplacingMergeTree"));
    assert!(o
        .ttl_statement("alerts")
        .contains("`alerts_local` ON CLUSTER `prod`"));
}

#[test]
fn cluster_ddl_without_a_keeper_is_per_node() {
    let o = SchemaOptions {
        per_node: true,
        ..opts(Some("fleet"))
    };
    let all: Vec<String> = o
        .migrations()
        .into_iter()
        .flat_map(|m| m.statements)
        .collect();
    for s in &all {
        assert!(!s.contains("ON CLUSTER"), "{s}");
        assert!(!s.contains("Replicated"), "{s}");
        assert!(s.contains("IF NOT EXISTS"), "{s}");
    }
    let local = all
        .iter()
        .find(|s| s.contains("`ew`.`http_exchanges_local`\n"))
        .expect("local table");
    assert!(local.contains("ENGINE = MergeTree()"), "{local}");
    assert!(
        local.contains("non_replicated_deduplication_window"),
        "{local}"
    );
    assert!(all.iter().any(|s| s.contains(
        "`ew`.`http_exchanges` AS `ew`.`http_exchanges_local`\nENGINE = Distributed('fleet', 'ew', 'http_exchanges_local', cityHash64(request_id))"
    )));
    // Each node keeps its own record of what it has applied.
    let mig = o.migrations_table();
    assert_eq!(o.migrations_storage(), "schema_migrations");
    assert_eq!(mig.len(), 2, "{mig:?}");
    assert!(
        mig[1].contains("`ew`.`schema_migrations`\n") && mig[1].contains("ReplacingMergeTree()")
    );
    assert!(!o.ttl_statement("alerts").contains("ON CLUSTER"));
}

/// The view makes every `requests` column, in order, of `edge_logs` columns that exist.
#[test]
fn requests_are_made_of_the_lines_columns() {
    let requests: Vec<&str> = table("requests")
        .expect("requests")
        .columns
        .iter()
        .map(|c| c.name)
        .collect();
    let made: Vec<&str> = REQUEST_FROM_EDGE.iter().map(|(n, _)| *n).collect();
    assert_eq!(made, requests);
    let edge = table("edge_logs").expect("edge_logs");
    for (name, expr) in REQUEST_FROM_EDGE {
        if name == expr {
            assert!(
                edge.columns.iter().any(|c| c.name == *name),
                "edge_logs has no {name}"
            );
        }
    }
    for o in [opts(None), opts(Some("prod"))] {
        let m = o.migrations();
        let third = m.iter().find(|m| m.version == 3).expect("migration 3");
        let view = third.statements.last().expect("the view");
        let (to, from) = if o.cluster.is_some() {
            ("`ew`.`requests_local`", "`ew`.`edge_logs_local`")
        } else {
            ("`ew`.`requests`", "`ew`.`edge_logs`")
        };
        assert!(
            view.contains("`requests_from_edge_logs_mv`")
                && view.contains(&format!("TO {to}\n"))
                && view.contains(&format!("FROM {from} WHERE joined")),
            "{view}"
        );
        // A table made before the columns gets them; one made with them is left alone.
        for s in &third.statements[..third.statements.len() - 1] {
            assert_eq!(s.matches("ADD COLUMN IF NOT EXISTS").count(), 13, "{s}");
        }
        assert_eq!(
            third.statements.len(),
            if o.cluster.is_some() { 3 } else { 2 }
        );
    }
}

#[test]
fn ttl_zero_keeps_forever() {
    let o = SchemaOptions {
        ttl_days: 0,
        ..opts(None)
    };
    let all: Vec<String> = o
        .migrations()
        .into_iter()
        .flat_map(|m| m.statements)
        .collect();
    assert!(all.iter().all(|s| !s.contains("TTL ")));
    assert!(o.ttl_statement("alerts").contains("REMOVE TTL"));
}

#[test]
fn quoting_and_versions() {
    assert_eq!(ident("a`b"), "`a\\`b`");
    assert_eq!(literal("it's"), "'it\\'s'");
    assert_eq!(parse_version("26.7.2.1"), Some((26, 7)));
    assert_eq!(parse_version("18.16.1"), Some((18, 16)));
    assert_eq!(parse_version("garbage"), None);
    assert!(latest_version() >= 2);
    let versions: Vec<u32> = opts(None).migrations().iter().map(|m| m.version).collect();
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(versions, sorted, "versions ascend and are unique");
}
