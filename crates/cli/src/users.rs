//! `flywheel users`: the people of a data directory (or of a scaled-out deployment's PostgreSQL, `--metadata-url`),
//! and a password reset for an operator whose owner is locked out. Works beside running servers.

use std::io::BufRead;

use anyhow::Context;

#[derive(Debug, clap::Subcommand)]
pub enum UsersCommand {
    /// List users with their organizations and roles.
    List(DataDir),
    /// Set a user's password, read from the first line of standard input; ends every session of theirs.
    SetPassword {
        #[command(flatten)]
        dir: DataDir,
        /// The user's email address.
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct DataDir {
    /// Data directory of the server.
    #[arg(long, env = "FLYWHEEL_DATA_DIR", default_value = "./flywheel-data")]
    data_dir: std::path::PathBuf,
    /// The shared PostgreSQL metadata of a scaled-out deployment (instead of the data directory's SQLite file).
    #[arg(long, env = "FLYWHEEL_METADATA_URL")]
    metadata_url: Option<String>,
}

async fn open(dir: &DataDir) -> anyhow::Result<flywheel_store::Store> {
    if let Some(url) = &dir.metadata_url {
        return flywheel_store::Store::connect_postgres(url)
            .await
            .context("cannot open the PostgreSQL metadata database");
    }
    let config = flywheel_server::Config::for_tests(dir.data_dir.clone());
    anyhow::ensure!(
        config.metadata_path().exists(),
        "{} holds no Flywheel data (no metadata.db); for a scaled-out deployment give --metadata-url",
        dir.data_dir.display()
    );
    flywheel_server::open_store(&config).await
}

pub fn run(cmd: UsersCommand) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        match cmd {
            UsersCommand::List(dir) => {
                let store = open(&dir).await?;
                let users = store.users().await?;
                if users.is_empty() {
                    println!("no users yet: make the first owner with POST /api/v1/auth/setup and the personal API key");
                }
                for (id, email, name) in users {
                    let roles: Vec<String> = store
                        .memberships_of(id)
                        .await?
                        .into_iter()
                        .map(|m| format!("{} ({}): {}", m.organization_name, m.organization_id, m.role))
                        .collect();
                    println!("{id}\t{email}\t{name}\t{}", roles.join(", "));
                }
                store.close().await;
                Ok(())
            }
            UsersCommand::SetPassword { dir, email } => {
                let mut password = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut password)
                    .context("cannot read the new password from standard input")?;
                let password = password.trim_end_matches(['\r', '\n']).to_owned();
                let mut problems = Vec::new();
                flywheel_server::auth::check_password_rules(&password, &email, "password", &mut problems);
                if let Some(p) = problems.first() {
                    anyhow::bail!("the new password {}", p.message);
                }
                let store = open(&dir).await?;
                let user = store
                    .user_by_email(email.trim())
                    .await?
                    .with_context(|| format!("no user has the email {email}"))?;
                let hash = flywheel_server::auth::hash_password(&password)
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                store.set_password(user.id, &hash, None).await?;
                let actor = flywheel_store::Actor {
                    label: "cli".to_owned(),
                    source_ip: None,
                };
                for m in store.memberships_of(user.id).await? {
                    store
                        .record_org_audit(m.organization_id, &actor, "user.password_reset", "user", &user.id.to_string(), None)
                        .await?;
                }
                store.close().await;
                eprintln!("password of {} set; their sessions were ended", user.email);
                Ok(())
            }
        }
    })
}
