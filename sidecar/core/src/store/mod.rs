//! The stored shape of records: row structs and the ClickHouse schema (pure).
pub mod rows;
pub mod schema;
