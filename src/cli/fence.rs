//! `fencelock fence`: install the fence into a user's database, or print what installing
//! runs, for those who apply schema changes through their own migrations.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fencelock::fence::postgres::{DEFAULT_SCHEMA, PgFence};

use super::exit;

#[derive(Subcommand)]
pub enum FenceCommand {
    /// Create the fence table and the fence()/try_fence() SQL functions in PostgreSQL.
    ///
    /// Idempotent, and safe while programs use the fence: it creates what is missing and
    /// replaces the functions by this version's. Afterwards any program fences a transaction
    /// with `SELECT fencelock.fence('LOCK NAME', TOKEN)` as its first statement.
    Install(InstallArgs),
    /// Print the SQL that `install` runs, to apply it by other means.
    Sql(SchemaArg),
}

#[derive(Args)]
pub struct SchemaArg {
    /// The schema for the table and the functions (lower-case letters, digits and _).
    #[arg(long, default_value = DEFAULT_SCHEMA)]
    schema: String,
}

#[derive(Args)]
pub struct InstallArgs {
    /// The database, as a libpq URL or key=value string (postgresql://user@host:5432/db).
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: String,
    #[command(flatten)]
    schema: SchemaArg,
}

pub async fn run(command: FenceCommand) -> anyhow::Result<u8> {
    match command {
        FenceCommand::Sql(schema) => {
            print!("{}", schema.fence()?.install_sql());
            Ok(exit::SUCCESS)
        }
        FenceCommand::Install(args) => {
            let fence = args.schema.fence()?;
            let (mut client, connection) =
                tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
                    .await
                    .with_context(|| {
                        format!("cannot connect to {}", redacted(&args.database_url))
                    })?;
            let connection = tokio::spawn(connection);
            fence
                .install(&mut client)
                .await
                .context("cannot install the fence")?;
            drop(client);
            let _ = connection.await;
            println!(
                "installed: {s}.fences, {s}.fence(name, token), {s}.try_fence(name, token)",
                s = fence.schema()
            );
            Ok(exit::SUCCESS)
        }
    }
}

impl SchemaArg {
    fn fence(&self) -> anyhow::Result<PgFence> {
        PgFence::in_schema(&self.schema).map_err(|e| exit::UsageError(e.to_string()).into())
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split_once(':').map_or(user, |(name, _)| name);
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => "the database".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(
            redacted("postgresql://app:secret@db:5432/x"),
            "postgresql://app@db:5432/x"
        );
        assert_eq!(redacted("postgres://db/x"), "postgres://db/x");
        assert_eq!(redacted("host=db password=secret"), "the database");
    }
}
