//! The embedded server's generated configuration: `config.xml` and `users.xml`.
use super::*;

/// The server's `config.xml` (in `etc`): one way in over HTTP (see the module doc), remote
/// hosts denied, no user scripts.
pub fn config_xml(etc: &Path) -> String {
    format!(
        r#"<clickhouse>
    <!-- Written by edgewatch at every start of its embedded ClickHouse; edits are lost. -->
    <users_config>users.xml</users_config>
    <!-- The memory worker corrects the memory tracker every 50 ms by default (20 wake-ups a
         second, most of this server's idle CPU); a second is plenty for these inserts. -->
    <memory_worker_period_ms>1000</memory_worker_period_ms>
    <!-- Present and empty: url(), s3() and the like may reach no host. -->
    <remote_url_allow_hosts></remote_url_allow_hosts>
    <!-- A directory that does not exist, inside the root-owned configuration directory: the
         server's account cannot create it, so executable() has nothing to run. -->
    <user_scripts_path>{}/no-user-scripts/</user_scripts_path>
    <http_handlers>
        <rule>
            <url>/ping</url>
            <methods>GET,HEAD</methods>
            <handler><type>static</type><response_content>Ok.
</response_content></handler>
        </rule>
        <rule>
            <headers><X-ClickHouse-User>{USER}</X-ClickHouse-User></headers>
            <handler><type>dynamic_query_handler</type><query_param_name>query</query_param_name></handler>
        </rule>
        <rule>
            <!-- Basic credentials whose user is exactly "{USER}": base64 of "{USER}:" then
                 the password's first byte (the ':' fixes the 13th character and the top bits
                 of the 14th). -->
            <headers><Authorization>regex:^Basic ZWRnZXdhdGNoO[g-v].*$</Authorization></headers>
            <handler><type>dynamic_query_handler</type><query_param_name>query</query_param_name></handler>
        </rule>
        <rule>
            <handler>
                <type>static</type>
                <status>403</status>
                <content_type>text/plain; charset=UTF-8</content_type>
                <response_content>edgewatch's embedded ClickHouse: authenticate as user {USER} with the password in edgewatch's secret file (see edgewatch's README, "The embedded store").
</response_content>
            </handler>
        </rule>
    </http_handlers>
</clickhouse>
"#,
        xml_escape(&etc.display().to_string())
    )
}

/// The server's `users.xml`: `edgewatch` with the secret's SHA-256, limited to `database`;
/// `default` only for the in-process session that opens the listener. A cluster node's
/// `edgewatch` may also create Distributed tables.
pub fn users_xml(password_sha256_hex: &str, database: &str, cluster_node: bool) -> String {
    let distributed = if cluster_node {
        "\n                <query>GRANT TABLE ENGINE ON Distributed</query>\n                <query>GRANT SELECT ON system.clusters</query>\n                <query>GRANT SELECT ON system.zookeeper_connection</query>"
    } else {
        ""
    };
    format!(
        r#"<clickhouse>
    <!-- Written by edgewatch at every start of its embedded ClickHouse; edits are lost. -->
    <profiles><default></default></profiles>
    <quotas><default></default></quotas>
    <users>
        <default>
            <!-- The session inside the server process that runs SYSTEM START LISTEN and keeps
                 the call alive; HTTP requests never reach this user (config.xml's handlers). -->
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>0</access_management>
            <grants>
                <query>GRANT SYSTEM LISTEN ON *.*</query>
                <query>GRANT SELECT ON system.numbers</query>
            </grants>
        </default>
        <{USER}>
            <password_sha256_hex>{password_sha256_hex}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>0</access_management>
            <named_collection_control>0</named_collection_control>
            <grants>
                <query>GRANT SELECT, INSERT, ALTER TABLE, CREATE DATABASE, CREATE TABLE, CREATE VIEW, DROP TABLE, DROP VIEW, OPTIMIZE ON {database}.*</query>
                <query>GRANT TABLE ENGINE ON MergeTree</query>
                <query>GRANT TABLE ENGINE ON ReplacingMergeTree</query>
                <query>GRANT TABLE ENGINE ON MaterializedView</query>{distributed}
            </grants>
        </{USER}>
    </users>
</clickhouse>
"#
    )
}

pub(super) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
