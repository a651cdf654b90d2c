//! Schema migrations: the SQL files of `migrations/`, embedded in the binary and applied in order.
//!
//! Each migration runs in its own transaction that first takes a transaction-level advisory lock,
//! so consumers starting together apply it once; the others wait, then see it recorded. Every
//! applied migration is recorded in `schema_migrations` with the sha256 of its SQL, and a
//! migration whose recorded checksum differs from the embedded file stops everything: the database
//! and this binary disagree about what the schema is.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Transaction};

use super::StoreError;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Order of application; the `NNNN` prefix of the file name.
    pub version: i32,
    /// The rest of the file name, for messages and `schema_migrations.name`.
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// Hex sha256 of the SQL text, as recorded in `schema_migrations.checksum`.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration this build knows, in version order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "insight",
        sql: include_str!("../../migrations/0002_insight.sql"),
    },
    Migration {
        version: 3,
        name: "alerts",
        sql: include_str!("../../migrations/0003_alerts.sql"),
    },
    Migration {
        version: 4,
        name: "running",
        sql: include_str!("../../migrations/0004_running.sql"),
    },
];

/// Key of the advisory lock that serialises migration runs across processes ("sitewatc" in
/// ASCII). Any 64-bit value works as long as nothing else in the database uses it.
const MIGRATION_LOCK_KEY: i64 = 0x7369_7465_7761_7463;

/// Created before anything else, under the lock; not itself a migration.
const BOOTSTRAP_SQL: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// A migration this run applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: &'static str,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Applied by this run, in order.
    pub applied: Vec<AppliedMigration>,
    /// Already applied before this run (checksums verified).
    pub already_applied: usize,
    /// Versions recorded in the database that this build does not know: a newer sitewatch
    /// migrated this database. Reported, not refused, so a rolling upgrade keeps old consumers
    /// running against an additive newer schema.
    pub unknown_versions: Vec<i32>,
}

/// Applies the pending migrations of [`MIGRATIONS`] in order, each in its own transaction, and
/// verifies the checksums of the ones already applied.
#[tracing::instrument(skip_all)]
pub async fn migrate(client: &mut Client) -> Result<MigrateReport, StoreError> {
    migrate_with(client, MIGRATIONS).await
}

async fn migrate_with(
    client: &mut Client,
    migrations: &'static [Migration],
) -> Result<MigrateReport, StoreError> {
    let mut report = MigrateReport::default();

    let tx = begin_locked(client).await?;
    // Quiet the "already exists, skipping" notice every start would log.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(StoreError::query("creating schema_migrations"))?;
    tx.batch_execute(BOOTSTRAP_SQL)
        .await
        .map_err(StoreError::query("creating schema_migrations"))?;
    let recorded = tx
        .query(
            "SELECT version, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(StoreError::query("reading schema_migrations"))?;
    for row in &recorded {
        let version: i32 = row.get(0);
        let checksum: String = row.get(1);
        match migrations.iter().find(|m| m.version == version) {
            Some(migration) => verify(migration, &checksum)?,
            None => report.unknown_versions.push(version),
        }
    }
    tx.commit()
        .await
        .map_err(StoreError::query("committing schema_migrations"))?;
    if !report.unknown_versions.is_empty() {
        tracing::warn!(
            versions = %report.unknown_versions.iter().map(i32::to_string).collect::<Vec<_>>().join(" "),
            "the database has migrations this sitewatch does not know (a newer version migrated it)"
        );
    }

    for migration in migrations {
        let tx = begin_locked(client).await?;
        // Re-read under the lock: another process may have applied it since the check above.
        let row = tx
            .query_opt(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[&migration.version],
            )
            .await
            .map_err(StoreError::query("reading schema_migrations"))?;
        if let Some(row) = row {
            verify(migration, &row.get::<_, String>(0))?;
            report.already_applied += 1;
            continue;
        }
        let failed = |source| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source,
        };
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &migration.checksum()],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        report.applied.push(AppliedMigration {
            version: migration.version,
            name: migration.name,
        });
    }
    Ok(report)
}

async fn begin_locked(client: &mut Client) -> Result<Transaction<'_>, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(StoreError::query("starting a migration transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(StoreError::query("taking the migration lock"))?;
    Ok(tx)
}

fn verify(migration: &Migration, recorded: &str) -> Result<(), StoreError> {
    let embedded = migration.checksum();
    if recorded == embedded {
        Ok(())
    } else {
        Err(StoreError::ChecksumMismatch {
            version: migration.version,
            name: migration.name,
            recorded: recorded.to_owned(),
            embedded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_named_like_their_files() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "versions must increase");
        }
        for migration in MIGRATIONS {
            let file = format!("migrations/{:04}_{}.sql", migration.version, migration.name);
            let on_disk = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&file),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(on_disk, migration.sql, "{file} is not the embedded text");
        }
    }

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, embedded);
    }

    #[test]
    fn checksum_mismatch_names_migration_and_both_sums() {
        let migration = &MIGRATIONS[0];
        let error = verify(migration, "x").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("0001_init"), "{message}");
        assert!(message.contains("checksum x,"), "{message}");
        assert!(message.contains(&migration.checksum()), "{message}");
        assert!(verify(migration, &migration.checksum()).is_ok());
    }
}
