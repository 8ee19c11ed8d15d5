//! `sqlx::migrate!` embeds `migrations/postgres/` at compile time: a new or changed migration
//! must rebuild the relay even when no Rust file changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
