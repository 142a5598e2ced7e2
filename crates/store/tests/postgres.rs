//! The PostgreSQL metadata schema (`migrations/postgres`) against the SQLite one (`migrations/sqlite`), on
//! throwaway PostgreSQL servers (`flywheel_store::test_support`, docs/postgres.md; one shared server with a database
//! per test, and one of its own for the placeholder test):
//!
//! - every SQLite migration has a PostgreSQL twin with the same version and description;
//! - both migrated schemas have the same tables, columns (order, type class, NOT NULL, default, generated id,
//!   case-insensitivity), primary keys, unique constraints, indexes, foreign keys and triggers; every difference is
//!   listed when it fails. The deliberate ones (BOOLEAN flags, one key given explicitly) are listed below;
//! - applying the PostgreSQL migrations again is a no-op;
//! - what the triggers do (default environments, append-only audit log with GDPR redaction) and the case-blind
//!   emails behave as in SQLite;
//! - sqlx's SQLite driver takes PostgreSQL's `$1` placeholders, so one statement text can serve both.

use std::collections::{BTreeMap, BTreeSet};

use flywheel_store::test_support::TestPostgres;
use flywheel_store::Store;
use sqlx::migrate::Migrator;
use sqlx::{PgPool, Row, SqlitePool};

static PG_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// SQLite `INTEGER` 0/1 columns that are `BOOLEAN` in PostgreSQL: the store binds and reads each as a Rust `bool`,
/// which sqlx's PostgreSQL driver maps to `BOOLEAN` only (binding a bool to a BIGINT column, or reading a BIGINT as
/// bool, is an error there). Their SQLite defaults 0/1 are `FALSE`/`TRUE`.
const BOOLEAN_COLUMNS: &[(&str, &str)] = &[
    ("persons", "is_identified"),
    ("features", "archived"),
    ("cohorts", "is_static"),
    ("cohorts", "deleted"),
    ("documents", "archived"),
    ("referral_codes", "vanity"),
    ("pql_scores", "qualified"),
    ("webhooks", "active"),
];

/// SQLite `INTEGER PRIMARY KEY` columns (a rowid alias, generated when omitted) that are plain keys in PostgreSQL:
/// the store always gives them (a hold's key is its entry's id, an erasure's its person's).
const EXPLICIT_KEYS: &[(&str, &str)] = &[
    ("reward_holds", "entry_id"),
    ("person_erasures", "person_id"),
];

#[derive(Clone, Debug, PartialEq, Eq)]
struct Column {
    name: String,
    /// integer / real / text / blob / boolean (PostgreSQL) / numeric, or a PostgreSQL type the store cannot read.
    class: String,
    /// Compared without case (SQLite `COLLATE NOCASE`, PostgreSQL `COLLATE nocase`, an ICU collation).
    nocase: bool,
    not_null: bool,
    default: Option<String>,
    /// Generated when omitted (SQLite rowid alias, PostgreSQL identity or sequence default).
    generated: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Table {
    columns: Vec<Column>,
    primary_key: Vec<String>,
    /// Column lists of the unique constraints and unique indexes (the primary key excluded).
    uniques: BTreeSet<Vec<String>>,
    /// Non-unique indexes: (name, columns with ` DESC` where descending).
    indexes: BTreeSet<(String, Vec<String>)>,
    /// (columns, referenced table, referenced columns, ON DELETE action).
    foreign_keys: BTreeSet<(Vec<String>, String, Vec<String>, String)>,
    triggers: BTreeSet<String>,
    /// CHECK constraints (their text differs between the dialects: counted).
    checks: usize,
}

type Schema = BTreeMap<String, Table>;

fn sqlite_class(declared: &str) -> &'static str {
    // SQLite's affinity rules (https://sqlite.org/datatype3.html, 3.1).
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "integer"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "text"
    } else if t.contains("BLOB") || t.is_empty() {
        "blob"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "real"
    } else {
        "numeric"
    }
}

fn pg_class(data_type: &str, udt: &str) -> String {
    match (data_type, udt) {
        ("bigint", _) => "integer".into(),
        // The store reads every integer as i64, which sqlx decodes from INT8 only.
        ("integer" | "smallint", _) => format!("{data_type} (use BIGINT: the store reads i64)"),
        ("double precision", _) => "real".into(),
        ("real", _) => "real as float4 (use DOUBLE PRECISION: the store reads f64)".into(),
        ("text", _) => "text".into(),
        ("bytea", _) => "blob".into(),
        ("boolean", _) => "boolean".into(),
        _ => format!("{data_type} ({udt})"),
    }
}

async fn sqlite_schema(pool: &SqlitePool) -> Schema {
    let mut schema = Schema::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
           AND name != '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for name in tables {
        let mut table = Table::default();
        let rows = sqlx::query(
            "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?) ORDER BY cid",
        )
        .bind(&name)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut pk: Vec<(i64, String)> = Vec::new();
        let pk_count = rows.iter().filter(|r| r.get::<i64, _>("pk") > 0).count();
        for r in &rows {
            let column: String = r.get("name");
            let declared: String = r.get("type");
            let pk_pos: i64 = r.get("pk");
            if pk_pos > 0 {
                pk.push((pk_pos, column.clone()));
            }
            // A one-column `INTEGER PRIMARY KEY` is the rowid: generated when omitted, never NULL. (Other primary
            // key columns of rowid tables accept NULL in SQLite, a legacy quirk: counted as NOT NULL here.)
            let rowid = pk_pos > 0 && pk_count == 1 && declared.eq_ignore_ascii_case("INTEGER");
            table.columns.push(Column {
                class: sqlite_class(&declared).into(),
                nocase: false,
                not_null: r.get::<i64, _>("notnull") == 1 || pk_pos > 0,
                default: r.get("dflt_value"),
                generated: rowid,
                name: column,
            });
        }
        pk.sort();
        table.primary_key = pk.into_iter().map(|(_, c)| c).collect();
        // No pragma lists CHECK constraints; the stored CREATE TABLE text (ALTER TABLE ADD COLUMN appends to it)
        // has one `CHECK (` each.
        let sql: String = sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE name = ?")
            .bind(&name)
            .fetch_one(pool)
            .await
            .unwrap();
        let sql = sql.to_ascii_uppercase().replace("CHECK (", "CHECK(");
        table.checks = sql.matches("CHECK(").count();

        // Column collations are not in pragma_table_info: an index on the column takes the column's collation,
        // so a probe index tells it (this is a throwaway copy of the schema).
        for column in table.columns.iter_mut().filter(|c| c.class == "text") {
            sqlx::query(&format!(
                "CREATE INDEX collation_probe ON \"{name}\" (\"{}\")",
                column.name
            ))
            .execute(pool)
            .await
            .unwrap();
            let coll: String = sqlx::query_scalar(
                "SELECT coll FROM pragma_index_xinfo('collation_probe') WHERE key = 1",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            sqlx::query("DROP INDEX collation_probe")
                .execute(pool)
                .await
                .unwrap();
            column.nocase = coll.eq_ignore_ascii_case("NOCASE");
        }

        let indexes =
            sqlx::query("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?)")
                .bind(&name)
                .fetch_all(pool)
                .await
                .unwrap();
        for ix in indexes {
            let index: String = ix.get("name");
            let origin: String = ix.get("origin");
            if origin == "pk" {
                continue;
            }
            let mut columns: Vec<String> = sqlx::query(
                "SELECT name, \"desc\" FROM pragma_index_xinfo(?) WHERE key = 1 ORDER BY seqno",
            )
            .bind(&index)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|c| {
                let col: Option<String> = c.get("name");
                let col = col.unwrap_or_else(|| "<expression>".into());
                if c.get::<i64, _>("desc") == 1 {
                    format!("{col} DESC")
                } else {
                    col
                }
            })
            .collect();
            if ix.get::<i64, _>("partial") == 1 {
                columns.push("<partial>".into());
            }
            if ix.get::<i64, _>("unique") == 1 {
                table.uniques.insert(columns);
            } else {
                table.indexes.insert((index, columns));
            }
        }

        let fks = sqlx::query(
            "SELECT id, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list(?)
             ORDER BY id, seq",
        )
        .bind(&name)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut by_id: BTreeMap<i64, (Vec<String>, String, Vec<String>, String)> = BTreeMap::new();
        for fk in fks {
            let entry = by_id
                .entry(fk.get("id"))
                .or_insert_with(|| (Vec::new(), fk.get("table"), Vec::new(), fk.get("on_delete")));
            entry.0.push(fk.get("from"));
            let to: Option<String> = fk.get("to");
            entry.2.push(to.unwrap_or_else(|| "<primary key>".into()));
        }
        table.foreign_keys = by_id.into_values().collect();
        schema.insert(name, table);
    }
    let triggers = sqlx::query("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger'")
        .fetch_all(pool)
        .await
        .unwrap();
    for t in triggers {
        let table: String = t.get("tbl_name");
        schema
            .entry(table)
            .or_default()
            .triggers
            .insert(t.get("name"));
    }
    schema
}

async fn pg_schema(pool: &PgPool) -> Schema {
    let mut schema = Schema::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
            AND table_name != '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for name in &tables {
        schema.insert(name.clone(), Table::default());
    }
    let columns = sqlx::query(
        "SELECT table_name::text AS tbl, column_name::text AS col, data_type::text AS data_type,
                udt_name::text AS udt, is_nullable::text AS nullable, column_default::text AS dflt,
                is_identity::text AS identity, collation_name::text AS coll
           FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name != '_sqlx_migrations'
          ORDER BY table_name, ordinal_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for c in columns {
        let Some(table) = schema.get_mut(&c.get::<String, _>("tbl")) else {
            continue; // a view
        };
        let data_type: String = c.get("data_type");
        let udt: String = c.get("udt");
        let default: Option<String> = c.get("dflt");
        let generated = c.get::<String, _>("identity") == "YES"
            || default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("));
        table.columns.push(Column {
            name: c.get("col"),
            class: pg_class(&data_type, &udt),
            nocase: c.get::<Option<String>, _>("coll").as_deref() == Some("nocase"),
            not_null: c.get::<String, _>("nullable") == "NO",
            // `'{}'::text` is `'{}'` (a cast added by PostgreSQL); a sequence default is the generated id.
            default: default.filter(|_| !generated).map(|d| strip_cast(&d)),
            generated,
        });
    }
    let indexes = sqlx::query(
        "SELECT t.relname::text AS tbl, i.relname::text AS idx, ix.indisunique AS is_unique,
                ix.indisprimary AS is_primary, ix.indpred IS NOT NULL AS is_partial,
                (SELECT array_agg(pg_get_indexdef(ix.indexrelid, k, true)
                                  || CASE WHEN pg_index_column_has_property(ix.indexrelid, k, 'desc')
                                          THEN ' DESC' ELSE '' END ORDER BY k)
                   FROM generate_series(1, ix.indnkeyatts) AS k) AS cols
           FROM pg_index ix
           JOIN pg_class i ON i.oid = ix.indexrelid
           JOIN pg_class t ON t.oid = ix.indrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE n.nspname = current_schema() AND t.relname != '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for ix in indexes {
        let Some(table) = schema.get_mut(&ix.get::<String, _>("tbl")) else {
            continue;
        };
        let mut cols: Vec<String> = ix.get::<Vec<String>, _>("cols");
        for c in &mut cols {
            *c = c.replace('"', "");
        }
        if ix.get::<bool, _>("is_partial") {
            cols.push("<partial>".into());
        }
        if ix.get("is_primary") {
            table.primary_key = cols;
        } else if ix.get("is_unique") {
            table.uniques.insert(cols);
        } else {
            table.indexes.insert((ix.get("idx"), cols));
        }
    }
    let fks = sqlx::query(
        "SELECT cl.relname::text AS tbl, rf.relname::text AS ref,
                ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord)
                    AS cols,
                ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord)
                    AS ref_cols,
                CASE c.confdeltype WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE'
                                   WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END AS on_delete
           FROM pg_constraint c
           JOIN pg_class cl ON cl.oid = c.conrelid
           JOIN pg_class rf ON rf.oid = c.confrelid
           JOIN pg_namespace n ON n.oid = cl.relnamespace
          WHERE c.contype = 'f' AND n.nspname = current_schema()",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for fk in fks {
        if let Some(table) = schema.get_mut(&fk.get::<String, _>("tbl")) {
            table.foreign_keys.insert((
                fk.get("cols"),
                fk.get("ref"),
                fk.get("ref_cols"),
                fk.get("on_delete"),
            ));
        }
    }
    let checks = sqlx::query(
        "SELECT cl.relname::text AS tbl, COUNT(*) AS n FROM pg_constraint c
           JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
          WHERE c.contype = 'c' AND n.nspname = current_schema() GROUP BY cl.relname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for c in checks {
        if let Some(table) = schema.get_mut(&c.get::<String, _>("tbl")) {
            table.checks = c.get::<i64, _>("n") as usize;
        }
    }
    let triggers = sqlx::query(
        "SELECT t.tgname::text AS name, c.relname::text AS tbl FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE NOT t.tgisinternal AND n.nspname = current_schema()",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for t in triggers {
        let table: String = t.get("tbl");
        schema
            .entry(table)
            .or_default()
            .triggers
            .insert(t.get("name"));
    }
    schema
}

/// `'{}'::text` → `'{}'`, `'x'::character varying` → `'x'`.
fn strip_cast(default: &str) -> String {
    match default.rfind("::") {
        Some(i)
            if default[i + 2..]
                .chars()
                .all(|c| c.is_ascii_alphabetic() || c == ' ') =>
        {
            default[..i].to_owned()
        }
        _ => default.to_owned(),
    }
}

/// The SQLite schema as the PostgreSQL one should be: the deliberate differences applied.
fn expected_postgres(mut sqlite: Schema) -> Schema {
    for &(table, column) in BOOLEAN_COLUMNS {
        let c = sqlite
            .get_mut(table)
            .and_then(|t| t.columns.iter_mut().find(|c| c.name == column))
            .unwrap_or_else(|| panic!("BOOLEAN_COLUMNS names {table}.{column}, not in SQLite"));
        assert_eq!(c.class, "integer", "{table}.{column} is a 0/1 INTEGER");
        c.class = "boolean".into();
        c.default = c.default.as_deref().map(|d| match d {
            "0" => "false".into(),
            "1" => "true".into(),
            other => panic!("{table}.{column}: default {other} is not 0/1"),
        });
    }
    for &(table, column) in EXPLICIT_KEYS {
        let c = sqlite
            .get_mut(table)
            .and_then(|t| t.columns.iter_mut().find(|c| c.name == column))
            .unwrap_or_else(|| panic!("EXPLICIT_KEYS names {table}.{column}, not in SQLite"));
        assert!(c.generated, "{table}.{column} is a rowid alias in SQLite");
        c.generated = false;
    }
    sqlite
}

/// `class integer / boolean, default Some("1") / Some("true")`.
fn column_differences(w: &Column, h: &Column) -> Vec<String> {
    let mut out = Vec::new();
    if w.class != h.class {
        out.push(format!("class {} / {}", w.class, h.class));
    }
    if w.nocase != h.nocase {
        out.push(format!("case-insensitive {} / {}", w.nocase, h.nocase));
    }
    if w.not_null != h.not_null {
        out.push(format!("NOT NULL {} / {}", w.not_null, h.not_null));
    }
    if w.default != h.default {
        out.push(format!("default {:?} / {:?}", w.default, h.default));
    }
    if w.generated != h.generated {
        out.push(format!("generated id {} / {}", w.generated, h.generated));
    }
    out
}

/// Every difference between the expected and the actual PostgreSQL schema, one line each.
fn differences(expected: &Schema, actual: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for name in expected.keys().filter(|n| !actual.contains_key(*n)) {
        out.push(format!("table {name}: missing in PostgreSQL"));
    }
    for name in actual.keys().filter(|n| !expected.contains_key(*n)) {
        out.push(format!("table {name}: only in PostgreSQL"));
    }
    for (name, want) in expected {
        let Some(have) = actual.get(name) else {
            continue;
        };
        for w in &want.columns {
            match have.columns.iter().find(|h| h.name == w.name) {
                None => out.push(format!("{name}.{}: column missing in PostgreSQL", w.name)),
                Some(h) if h != w => out.push(format!(
                    "{name}.{}: {} (SQLite / PostgreSQL)",
                    w.name,
                    column_differences(w, h).join(", ")
                )),
                Some(_) => {}
            }
        }
        for h in &have.columns {
            if !want.columns.iter().any(|w| w.name == h.name) {
                out.push(format!("{name}.{}: column only in PostgreSQL", h.name));
            }
        }
        let order = |t: &Table| t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let (want_order, have_order) = (order(want), order(have));
        let mut sorted = (want_order.clone(), have_order.clone());
        sorted.0.sort();
        sorted.1.sort();
        if sorted.0 == sorted.1 && want_order != have_order {
            out.push(format!(
                "{name}: column order differs: SQLite {want_order:?}, PostgreSQL {have_order:?}"
            ));
        }
        if want.primary_key != have.primary_key {
            out.push(format!(
                "{name}: primary key SQLite {:?}, PostgreSQL {:?}",
                want.primary_key, have.primary_key
            ));
        }
        for u in want.uniques.difference(&have.uniques) {
            out.push(format!("{name}: unique {u:?} missing in PostgreSQL"));
        }
        for u in have.uniques.difference(&want.uniques) {
            out.push(format!("{name}: unique {u:?} only in PostgreSQL"));
        }
        for i in want.indexes.difference(&have.indexes) {
            out.push(format!("{name}: index {i:?} missing in PostgreSQL"));
        }
        for i in have.indexes.difference(&want.indexes) {
            out.push(format!("{name}: index {i:?} only in PostgreSQL"));
        }
        for f in want.foreign_keys.difference(&have.foreign_keys) {
            out.push(format!("{name}: foreign key {f:?} missing in PostgreSQL"));
        }
        for f in have.foreign_keys.difference(&want.foreign_keys) {
            out.push(format!("{name}: foreign key {f:?} only in PostgreSQL"));
        }
        if want.checks != have.checks {
            out.push(format!(
                "{name}: {} CHECK constraints in SQLite, {} in PostgreSQL",
                want.checks, have.checks
            ));
        }
        for t in want.triggers.difference(&have.triggers) {
            out.push(format!("{name}: trigger {t} missing in PostgreSQL"));
        }
        for t in have.triggers.difference(&want.triggers) {
            out.push(format!("{name}: trigger {t} only in PostgreSQL"));
        }
    }
    out
}

/// A new database of the binary's shared server, migrated.
async fn migrated_postgres(database: &str) -> (PgPool, String) {
    let url = TestPostgres::shared()
        .unwrap()
        .create_database(database)
        .unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    PG_MIGRATOR.run(&pool).await.unwrap();
    (pool, url)
}

#[test]
fn every_sqlite_migration_has_a_postgres_twin() {
    let list = |m: &Migrator| -> Vec<(i64, String)> {
        m.iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    };
    assert_eq!(list(&SQLITE_MIGRATOR), list(&PG_MIGRATOR));
    assert!(PG_MIGRATOR.iter().count() >= 23);
}

#[tokio::test]
async fn postgres_schema_matches_sqlite() {
    let (pool, _) = migrated_postgres("schema_parity").await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let store = Store::open(&path).await.unwrap();
    store.close().await;
    // One connection: the collation probes create and drop an index, and another connection's open read could
    // still see an older schema.
    let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();

    let sqlite_schema = sqlite_schema(&sqlite).await;
    let pg_schema = pg_schema(&pool).await;
    // Guard against comparing two empty lists.
    assert!(sqlite_schema.len() >= 40, "{:?}", sqlite_schema.keys());
    assert!(
        sqlite_schema
            .values()
            .map(|t| t.columns.len())
            .sum::<usize>()
            > 250
    );
    assert_eq!(
        sqlite_schema.values().map(|t| t.checks).sum::<usize>(),
        6,
        "api_keys 2, group_types, memberships, team_invitations, projects 1 each"
    );
    let email = &sqlite_schema["users"].columns[1];
    assert!(
        email.name == "email" && email.nocase,
        "the collation probe works: {email:?}"
    );

    let diff = differences(&expected_postgres(sqlite_schema), &pg_schema);
    assert!(
        diff.is_empty(),
        "the PostgreSQL schema differs from the SQLite one in {} ways:\n  {}",
        diff.len(),
        diff.join("\n  ")
    );
}

#[tokio::test]
async fn postgres_migrations_run_once() {
    let (pool, url) = migrated_postgres("run_once").await;
    let applied = |pool: PgPool| async move {
        sqlx::query(
            "SELECT version, description, success, checksum, installed_on::text AS installed_on
               FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>("version"),
                r.get::<String, _>("description"),
                r.get::<bool, _>("success"),
                r.get::<Vec<u8>, _>("checksum"),
                r.get::<String, _>("installed_on"),
            )
        })
        .collect::<Vec<_>>()
    };
    let first = applied(pool.clone()).await;
    assert_eq!(first.len(), PG_MIGRATOR.iter().count());
    assert!(first.iter().all(|m| m.2), "every migration succeeded");
    let sequences: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, last FROM id_sequences ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        sequences,
        [("identity".to_owned(), 0), ("persons".to_owned(), 0)]
    );

    // A second run (another node starting, a restart) applies nothing and changes nothing.
    PG_MIGRATOR.run(&pool).await.unwrap();
    let reopened = PgPool::connect(&url).await.unwrap();
    PG_MIGRATOR.run(&reopened).await.unwrap();
    assert_eq!(applied(pool.clone()).await, first);
    let again: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, last FROM id_sequences ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(again, sequences);

    // A deployment's role needs no superuser: the database's owner can run every migration (the `nocase`
    // collation included).
    sqlx::query("CREATE ROLE flywheel_app LOGIN PASSWORD 'app-password'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE flywheel_app OWNER flywheel_app")
        .execute(&pool)
        .await
        .unwrap();
    let app = PgPool::connect(&format!(
        "postgres://flywheel_app:app-password@127.0.0.1:{}/flywheel_app",
        TestPostgres::shared().unwrap().port()
    ))
    .await
    .unwrap();
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&app)
            .await
            .unwrap();
    assert!(!superuser);
    PG_MIGRATOR.run(&app).await.unwrap();
    let applied_as_app: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&app)
            .await
            .unwrap();
    assert_eq!(applied_as_app, PG_MIGRATOR.iter().count() as i64);
}

/// What the schema's triggers and types do, beyond its shape: as in SQLite.
#[tokio::test]
async fn postgres_triggers_and_types_behave_like_sqlite() {
    let (pool, _) = migrated_postgres("behaviour").await;
    let now = "2026-11-27T00:00:00.000000Z";

    // The cluster sorts and folds text like SQLite (bytes; ASCII-only case folding).
    let (collate, lower): (String, String) = sqlx::query_as(
        "SELECT datcollate::text, lower('ÀB') FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((collate.as_str(), lower.as_str()), ("C", "Àb"));

    // A new project gets its three environments.
    let org: i64 = sqlx::query_scalar(
        "INSERT INTO organizations (name, created_at) VALUES ($1, $2) RETURNING id",
    )
    .bind("Org")
    .bind(now)
    .fetch_one(&pool)
    .await
    .unwrap();
    let project: i64 = sqlx::query_scalar(
        "INSERT INTO projects (organization_id, name, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(org)
    .bind("P")
    .bind(now)
    .fetch_one(&pool)
    .await
    .unwrap();
    let environments: Vec<String> = sqlx::query_scalar(
        "SELECT key FROM environments WHERE project_id = $1 AND created_at = $2 ORDER BY key",
    )
    .bind(project)
    .bind(now)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(environments, ["development", "production", "staging"]);

    // The audit log refuses updates and deletes…
    let audit: i64 = sqlx::query_scalar(
        "INSERT INTO audit_log (project_id, actor, action, entity_type, entity_id, at)
         VALUES ($1, 'ada', 'feature.created', 'feature', 'f', $2) RETURNING id",
    )
    .bind(project)
    .bind(now)
    .fetch_one(&pool)
    .await
    .unwrap();
    for refused in [
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
    ] {
        let e = sqlx::query(refused).execute(&pool).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{refused}: {e}");
    }
    // …except a redaction during an erasure, which keeps id, project, action, entity type and time.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO audit_redactions (erasure_id) VALUES ('e1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = '<erased>', entity_id = '<erased>' WHERE id = $1")
        .bind(audit)
        .execute(&mut *tx)
        .await
        .unwrap();
    let e = sqlx::query("UPDATE audit_log SET action = 'x' WHERE id = $1")
        .bind(audit)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    tx.rollback().await.unwrap();
    let actor: String = sqlx::query_scalar("SELECT actor FROM audit_log WHERE id = $1")
        .bind(audit)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(actor, "ada");

    // Emails ignore case like SQLite's NOCASE: equality with a text parameter, UNIQUE and ON CONFLICT (email), with
    // the store's statements and binds.
    let insert = "INSERT INTO users (email, name, password_hash, created_at, password_changed_at)
                  VALUES ($1, '', 'x', $2, $2) ON CONFLICT (email) DO NOTHING";
    let done = sqlx::query(insert)
        .bind("Ada@Example.com")
        .bind(now)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    let done = sqlx::query(insert)
        .bind("ada@EXAMPLE.com")
        .bind(now)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 0, "the same email in other case");
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE email = $1")
        .bind("ADA@example.COM")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(email, "Ada@Example.com", "kept as written");

    // CHECK constraints refuse what SQLite's refuse.
    for refused in [
        "INSERT INTO api_keys (kind, organization_id, name, key_hash, key_prefix, created_at)
         VALUES ('other', 1, 'k', 'h1', 'p', 'now')",
        "INSERT INTO api_keys (kind, organization_id, name, key_hash, key_prefix, created_at)
         VALUES ('project', 1, 'k', 'h2', 'p', 'now')",
        "INSERT INTO group_types (project_id, group_type, group_type_index) VALUES (1, 'sixth', 5)",
        "UPDATE projects SET retention_days = 0",
    ] {
        let e = sqlx::query(refused).execute(&pool).await.unwrap_err();
        assert!(e.to_string().contains("check constraint"), "{refused}: {e}");
    }

    // The BOOLEAN flags take and give Rust bools, as the store binds them.
    sqlx::query(
        "INSERT INTO features (project_id, key, definition, archived, created_at, updated_at)
         VALUES ($1, 'f', '{}', $2, $3, $3)",
    )
    .bind(project)
    .bind(false)
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    let (archived, version): (bool, i64) =
        sqlx::query_as("SELECT archived, version FROM features WHERE project_id = $1")
            .bind(project)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((archived, version), (false, 1));
}

/// sqlx's SQLite driver binds `$N` parameters by their number (it reads SQLite's parameter names), so statements
/// written with PostgreSQL's placeholders run unchanged on SQLite — including out of order and repeated.
#[tokio::test]
async fn dollar_placeholders_work_on_sqlite_and_postgres() {
    let sqlite = SqlitePool::connect("sqlite::memory:").await.unwrap();
    // A server of its own (the others share one): dropped at the end.
    let pg = TestPostgres::start().unwrap();
    let postgres = PgPool::connect(pg.url()).await.unwrap();

    let sql = "SELECT $2 || '-' || $1 || '-' || $2";
    let on_sqlite: String = sqlx::query_scalar(sql)
        .bind("a")
        .bind("b")
        .fetch_one(&sqlite)
        .await
        .unwrap();
    let on_postgres: String = sqlx::query_scalar(sql)
        .bind("a")
        .bind("b")
        .fetch_one(&postgres)
        .await
        .unwrap();
    assert_eq!(on_sqlite, "b-a-b");
    assert_eq!(on_postgres, on_sqlite);

    sqlx::query("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL, n BIGINT)")
        .execute(&sqlite)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL, n BIGINT)")
        .execute(&postgres)
        .await
        .unwrap();
    let insert = "INSERT INTO t (n, name, id) VALUES ($3, $2, $1) RETURNING id";
    // The store's optional-filter pattern `(? IS NULL OR name = ?)` with one parameter used twice.
    let select = "SELECT name, n FROM t WHERE id = $1 AND ($2 IS NULL OR name = $2)";
    let id: i64 = sqlx::query_scalar(insert)
        .bind(7_i64)
        .bind("seven")
        .bind(Some(70_i64))
        .fetch_one(&sqlite)
        .await
        .unwrap();
    let id_pg: i64 = sqlx::query_scalar(insert)
        .bind(7_i64)
        .bind("seven")
        .bind(Some(70_i64))
        .fetch_one(&postgres)
        .await
        .unwrap();
    assert_eq!((id, id_pg), (7, 7));
    for name in [None, Some("seven")] {
        let a: (String, Option<i64>) = sqlx::query_as(select)
            .bind(7_i64)
            .bind(name)
            .fetch_one(&sqlite)
            .await
            .unwrap();
        let b: (String, Option<i64>) = sqlx::query_as(select)
            .bind(7_i64)
            .bind(name)
            .fetch_one(&postgres)
            .await
            .unwrap();
        assert_eq!(a, ("seven".to_owned(), Some(70)));
        assert_eq!(a, b);
    }
}

/// Nodes starting together on an empty database: exactly one creates the first organization.
#[tokio::test]
async fn nodes_starting_together_bootstrap_once() {
    let url = TestPostgres::shared()
        .unwrap()
        .create_database("bootstrap_race")
        .unwrap();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(flywheel_store::Store::connect_postgres(&url).await.unwrap());
    }
    let results = futures_util::future::join_all(
        stores
            .iter()
            .map(|s| s.bootstrap_if_empty("Org", "Project")),
    )
    .await;
    let created = results
        .into_iter()
        .map(Result::unwrap)
        .filter(Option::is_some)
        .count();
    assert_eq!(created, 1);
    let (organizations,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM organizations")
        .fetch_one(&PgPool::connect(&url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(organizations, 1);
}
