//! Starting the Manager: the spawn functions a supervisor calls, which
//! return once `consensus` members are connected when asked to.

use ractor::{Actor, ActorCell, ActorRef};

use super::*;

/// How to start the Manager, beyond its [`Config`]: see [`CloisterManager::start`].
#[derive(Default)]
pub struct StartOptions {
    /// The Manager's registered name (names are process-wide).
    pub name: Option<String>,
    /// The supervisor to link it to.
    pub supervisor: Option<ActorCell>,
    /// Return only once `consensus` members are connected (or fail at the deadline).
    pub hold: bool,
    /// Listeners that see every event from the start, the first being a
    /// snapshot of the `down` state.
    pub listeners: Vec<Box<dyn Listener>>,
}

impl CloisterManager {
    /// Spawns the Manager linked to `supervisor` and returns once `consensus`
    /// members, this node included, are connected: a supervisor that calls it
    /// in `pre_start` starts its later children only in an assembled cluster.
    /// Returns the Manager and the [`Cloister`] handle, as ractor's
    /// `Actor::spawn_linked` returns an actor and its join handle (the
    /// supervisor hears of the Manager's end through its supervision
    /// events; [`CloisterManager::start`] gives the join handle too).
    /// At `startup_deadline` it stops what it started and fails with
    /// [`CloisterError::ConsensusTimeout`], which says whom it had and whom
    /// it could not reach, and why.
    ///
    /// Returned from your `pre_start` with `?`, the error makes ractor's
    /// spawn of your supervisor fail with it inside, worded by ractor as a
    /// panic ("Actor panicked during startup"): print
    /// [`CloisterError::cause_of`] to show what it is.
    ///
    /// # Examples
    ///
    /// Start the Manager first in your supervisor, so later children start in
    /// an assembled cluster:
    ///
    /// ```no_run
    /// use cloister_core::Config;
    /// use cloister_ractor::{Cloister, CloisterManager};
    /// # use ractor::{Actor, ActorProcessingErr, ActorRef};
    /// # struct Root;
    ///
    /// impl Actor for Root {
    /// #   type Msg = (); type State = Cloister; type Arguments = ();
    ///     async fn pre_start(&self, myself: ActorRef<()>, _: ()) -> Result<Cloister, ActorProcessingErr> {
    ///         let config = Config::nodes("shop", ["shop@10.0.0.1:4000", "shop@10.0.0.2:4000"])?
    ///             .with_consensus(2);
    ///         let (_manager, cloister) =
    ///             CloisterManager::spawn_linked(Some("cloister".into()), config, myself.get_cell()).await?;
    ///         Ok(cloister)
    ///     }
    /// }
    ///
    /// # async fn main_of_the_node() {
    /// // Where the supervisor is spawned: say what failed, not only "panicked".
    /// if let Err(error) = Actor::spawn(None, Root, ()).await {
    ///     match cloister_ractor::CloisterError::cause_of(&error) {
    ///         Some(cloister) => eprintln!("cannot join the cluster: {cloister}"),
    ///         None => eprintln!("{error}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn spawn_linked(
        name: Option<String>,
        config: Config,
        supervisor: ActorCell,
    ) -> Result<(ActorRef<CloisterMessage>, Cloister), CloisterError> {
        let options = StartOptions {
            name,
            supervisor: Some(supervisor),
            hold: true,
            listeners: Vec::new(),
        };
        let (manager, _, cloister) = Self::start(config, options).await?;
        Ok((manager, cloister))
    }

    /// [`CloisterManager::spawn_linked`] without a supervisor.
    ///
    /// # Examples
    ///
    /// Join the cluster from `main`, configured by `CLOISTER_*` environment
    /// variables; returns once `consensus` members are connected:
    ///
    /// ```no_run
    /// use cloister_core::Config;
    /// use cloister_ractor::CloisterManager;
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let (_manager, _, cloister) = CloisterManager::spawn(None, Config::from_env()?).await?;
    ///     println!("{} joined {:?}", cloister.me(), cloister.members());
    ///     Ok(())
    /// }
    /// ```
    pub async fn spawn(name: Option<String>, config: Config) -> Result<Spawned, CloisterError> {
        Self::start(
            config,
            StartOptions {
                name,
                supervisor: None,
                hold: true,
                listeners: Vec::new(),
            },
        )
        .await
    }

    /// Spawns the Manager and returns at once, before consensus. Send
    /// [`CloisterMessage::AwaitConsensus`] (or use [`crate::await_consensus`])
    /// to wait for it later.
    ///
    /// # Examples
    ///
    /// Start at once, subscribe to topology events, then wait for consensus:
    ///
    /// ```no_run
    /// use cloister_ractor::CloisterManager;
    /// # enum AppMsg { Topology(cloister_core::TopologyEvent) }
    /// # impl ractor::Message for AppMsg {}
    /// # async fn example(config: cloister_core::Config, app: ractor::ActorRef<AppMsg>) -> Result<(), Box<dyn std::error::Error>> {
    ///
    /// let (manager, _, cloister) = CloisterManager::spawn_unheld(None, config, None).await?;
    /// println!("{} started, {}", cloister.me(), cloister.state());
    /// // `app` sees the assembly as it happens.
    /// cloister_ractor::subscribe(&manager, app, |event| Some(AppMsg::Topology(event)))?;
    /// cloister_ractor::await_consensus(&manager).await?;
    /// # Ok(()) }
    /// ```
    pub async fn spawn_unheld(
        name: Option<String>,
        config: Config,
        supervisor: Option<ActorCell>,
    ) -> Result<Spawned, CloisterError> {
        Self::start(
            config,
            StartOptions {
                name,
                supervisor,
                hold: false,
                listeners: Vec::new(),
            },
        )
        .await
    }

    /// The general form of the spawn functions: a name, a supervisor,
    /// whether to hold until consensus, and listeners that see every event
    /// from the very first (a listener added later with [`crate::add_listener`]
    /// sees a snapshot, then what follows).
    ///
    /// # Examples
    ///
    /// Start held until consensus, with a listener that sees every event from
    /// the first:
    ///
    /// ```no_run
    /// use cloister_ractor::{CloisterManager, StartOptions};
    /// # use cloister_core::{NodeState, Snapshot};
    /// # struct LogStates;
    /// # impl cloister_ractor::Listener for LogStates {
    /// #     fn on_state_change(&self, _: NodeState, _: NodeState, _: &Snapshot) {}
    /// # }
    /// # async fn example(config: cloister_core::Config) -> Result<(), Box<dyn std::error::Error>> {
    ///
    /// let options = StartOptions {
    ///     name: Some("cloister".into()),
    ///     hold: true,
    ///     listeners: vec![Box::new(LogStates)],
    ///     ..StartOptions::default()
    /// };
    /// let (manager, _, cloister) = CloisterManager::start(config, options).await?;
    /// # let _ = (manager, cloister); Ok(()) }
    /// ```
    pub async fn start(config: Config, options: StartOptions) -> Result<Spawned, CloisterError> {
        config.validate()?;
        let port = config.listen_port;
        let StartOptions {
            name,
            supervisor,
            hold,
            listeners,
        } = options;
        let arguments = (config, listeners);
        let spawned = match supervisor {
            Some(supervisor) => {
                Actor::spawn_linked(name, CloisterManager, arguments, supervisor).await
            }
            None => Actor::spawn(name, CloisterManager, arguments).await,
        };
        let (actor, join) = spawned.map_err(|e| CloisterError::not_started(port, e))?;
        let gone = |e: &dyn std::fmt::Display| CloisterError::ManagerGone(e.to_string());
        let cloister = ractor::call!(actor, CloisterMessage::Handle).map_err(|e| gone(&e))?;
        if hold {
            match crate::await_consensus(&actor).await {
                Ok(_) => {}
                Err(error) => {
                    actor.stop(Some("consensus not reached".into()));
                    let _ = join.await;
                    return Err(error);
                }
            }
        }
        Ok((actor, join, cloister))
    }
}
