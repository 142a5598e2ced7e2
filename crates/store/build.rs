//! `sqlx::migrate!` embeds the migrations when the crate compiles: a changed or new migration file must recompile it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
