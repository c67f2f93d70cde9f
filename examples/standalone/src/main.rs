//! A clustered node in a user's own crate, written as the README says: it
//! depends on cloister-ractor without features and uses only
//! `cloister_ractor::harness` to be driven by a test. Each command line names
//! a key; the node answers with the key's owner.
//!
//! Under the harness the commands come from `control_lines()` (the harness
//! owns stdin); run by hand, they come from stdin.

use cloister_core::Config;
use cloister_ractor::harness::{control_lines, print_line, EventLines};
use cloister_ractor::{CloisterManager, StartOptions};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing: under the harness this also exits the node when the test
    // goes away, even while it is still assembling.
    let mut commands = commands();
    let options = StartOptions {
        listeners: vec![Box::new(EventLines::default())],
        ..StartOptions::default()
    };
    let (_manager, done, cloister) = CloisterManager::start(Config::from_env()?, options).await?;
    tokio::spawn(async move {
        while let Some(key) = commands.recv().await {
            let owner = cloister.node_for(&key).map(|node| node.to_string());
            let fields = serde_json::json!({ "key": key, "owner": owner });
            print_line(cloister.me(), "owner", fields);
        }
    });
    done.await?;
    Ok(())
}

/// The harness's command lines, or stdin's when run by hand.
fn commands() -> UnboundedReceiver<String> {
    if let Some(lines) = control_lines() {
        return lines;
    }
    let (sender, receiver) = unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = sender.send(line);
        }
    });
    receiver
}
