//! The `sylphx` command: serve, migrate, token, schema export.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sylphx::auth::{Actor, Principal, Role};
use sylphx::config::{Config, ServeArgs, StoreArgs};
use sylphx::domain::{self, Ctx};
use sylphx::server::{self, AppState};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sylphx", version, about = "The Sylphx control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (REST, GraphQL, websocket, playground).
    Serve(ServeArgs),
    /// Apply pending migrations to the state store and exit.
    Migrate(StoreArgs),
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Export the GraphQL schema and the OpenAPI document.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token (and its organisation if missing); prints only the token.
    Create {
        /// Organisation slug.
        #[arg(long, env = "SYLPHX_ORG")]
        org: String,
        #[arg(long, default_value = "cli")]
        name: String,
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleArg,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Admin,
    Write,
    Read,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Write schema.graphql and openapi.json.
    Export {
        /// Target directory.
        #[arg(long, default_value = "schema")]
        out: PathBuf,
    },
}

fn store_config(store: StoreArgs) -> sylphx::Result<Config> {
    Config::load(&ServeArgs {
        store,
        ..ServeArgs::default()
    })
}

async fn run(cli: Cli) -> sylphx::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let app = server::App::new(Config::load(&args)?).await?;
            let apps = app.start_background().await?;
            if let Some(token) = server::bootstrap(&app).await? {
                let path = app.config().data_dir.join("admin-token");
                println!(
                    "Created organisation 'default' and an admin token (shown once, also saved to {}):",
                    path.display()
                );
                println!("{}", token.expose());
            }
            println!(
                "Sylphx listening on http://{} (REST /api/v1, GraphQL /graphql, playground /playground); {} runtime{}",
                app.config().listen,
                app.deployer().runtime.kind(),
                apps.map(|a| format!(", apps routed by Host at http://{a}"))
                    .unwrap_or_default()
            );
            if !app.storages().serves_s3() {
                println!(
                    "Blob storage: keys minted by {} for each storage (blob_provider)",
                    app.storages().provider()
                );
            }
            if let (Some(bound), Some(url)) = (app.storages().bound(), app.storages().endpoint()) {
                println!(
                    "S3 endpoint listening on http://{bound} (clients use {url}, bucket {}, path-style)",
                    app.storages().bucket()
                );
            }
            server::serve(app).await
        }
        Command::Migrate(store) => {
            let config = store_config(store)?;
            config.ensure_data_dir()?;
            sylphx::store::migrate(&config.database_url).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    org,
                    name,
                    role,
                    store,
                },
        } => {
            let app = AppState::new(store_config(store)?).await?;
            let org = domain::organizations::ensure(app.db(), &org).await?;
            let ctx = Ctx {
                principal: Principal {
                    org_id: org.id,
                    role: Role::Admin,
                    actor: Actor::System,
                },
                request_id: None,
            };
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Write => Role::Write,
                RoleArg::Read => Role::Read,
            };
            let (_, token) = domain::api_keys::create(
                app.db(),
                &ctx,
                domain::api_keys::NewKey {
                    name,
                    role,
                    expires_at: None,
                },
            )
            .await?;
            println!("{}", token.expose());
            Ok(())
        }
        Command::Schema {
            command: SchemaCommand::Export { out },
        } => {
            let (sdl, openapi) = sylphx::rest::export().await?;
            std::fs::create_dir_all(&out).map_err(sylphx::Error::internal)?;
            std::fs::write(out.join("schema.graphql"), sdl).map_err(sylphx::Error::internal)?;
            std::fs::write(out.join("openapi.json"), openapi).map_err(sylphx::Error::internal)?;
            eprintln!(
                "wrote {}/schema.graphql and {}/openapi.json",
                out.display(),
                out.display()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYLPHX_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.public_message_for_cli());
            ExitCode::FAILURE
        }
    }
}
