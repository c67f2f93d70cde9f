//! The node of this crate run as a cluster with the `testing` feature, which
//! only the dev-dependency turns on.

use cloister_ractor::testing::{last_of, LocalCluster, DEFAULT_TIMEOUT};

#[test]
fn two_nodes_assemble_and_agree_on_an_owner() -> Result<(), Box<dyn std::error::Error>> {
    let binary = env!("CARGO_BIN_EXE_cloister-standalone");
    let cluster = LocalCluster::builder(binary, 2).start()?;
    cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT)?;

    // A command goes through control_lines(), the answer comes back as a line.
    let mut owners = Vec::new();
    for i in 0..2 {
        cluster.send_line(i, "user:42")?;
        cluster.wait_for(i, DEFAULT_TIMEOUT, |events| {
            last_of(events, "owner").is_some()
        })?;
        let answer = last_of(&cluster.events(i), "owner").cloned();
        let answer = answer.ok_or("no owner line")?;
        assert_eq!(answer["key"], "user:42");
        owners.push(answer["owner"].as_str().ok_or("no owner")?.to_string());
    }
    // Both nodes name the same owner, one of the two.
    assert_eq!(owners[0], owners[1]);
    assert!([cluster.node_name(0), cluster.node_name(1)].contains(&owners[0].as_str()));
    Ok(())
}
