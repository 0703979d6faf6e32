import CatenaCluster
import CatenaCore
import CatenaMaster

/// The master's process in the simulation: the real ``ChainManager`` over a simulated state
/// file (a compare-and-swap that takes a while and sometimes fails) — the simulation's twin of
/// `Master`/`MasterCore`. It answers heartbeats from the active state, ticks every twentieth
/// of the failure timeout, and persists one proposal at a time.
final class SimMaster {
    unowned let sim: ClusterSimulation
    var inc = 0
    var life = Life.alive
    /// The state file: what survives the master's death.
    var file: MasterState
    /// The process: lost when it dies.
    var manager: ChainManager
    var startedAt: UInt64 = 0
    var inFlight: MasterState?
    let settings: ChainManager.Settings
    /// Every state the file ever held, oldest first: what an operator could restore from a backup.
    var snapshots: [MasterState] = []
    /// The state each written one was proposed from (its lineage, across restored old states).
    var parents: [MasterState: MasterState] = [:]

    init(sim: ClusterSimulation, state: MasterState) {
        self.sim = sim
        self.file = state
        self.settings = ChainManager.Settings(failureTimeout: .nanoseconds(Int64(sim.settings.failureTimeout)))
        self.manager = ChainManager(state: state, settings: settings, now: 0)
        self.snapshots = [state]
    }

    /// The manager's clock: nanoseconds since this incarnation started.
    var clock: UInt64 { sim.now - startedAt }

    func running(_ incarnation: Int) -> Bool { incarnation == inc && life.isUp }

    private func log(_ message: @autoclosure () -> String) { sim.log("master: \(message())") }

    func start() {
        startedAt = sim.now
        manager = ChainManager(state: file, settings: settings, now: 0, loaded: inc > 0)
        inFlight = nil
        sim.schedule(.masterTick(inc: inc), after: sim.settings.failureTimeout / 20)
    }

    /// Dies; a proposal being persisted may or may not have reached the file.
    func kill() {
        if let p = inFlight, sim.chance(0.5) {
            store(p)
            log("killed just after persisting epoch \(p.epoch)")
        } else {
            log("killed")
        }
        inc += 1
        life = .dead
        inFlight = nil
    }

    func restart() {
        life = .alive
        log("restarts from its file at epoch \(file.epoch)")
        start()
    }

    func tick() {
        if manager.staleness != nil {
            // Its state is older than the chain's: it proposes nothing, and looks for a newer
            // stored state on every tick (as MasterCore does).
            manager.tick(now: clock)
            reload()
        } else {
            propose()
        }
        sim.schedule(.masterTick(inc: inc), after: sim.settings.failureTimeout / 20)
    }

    /// Rebuilds the manager over the file if it holds another state that is not older than
    /// what is known to be in use — as `MasterCore.reload` does after a lost compare-and-swap
    /// or while stale.
    func reload() {
        let inUse = manager.staleness ?? ChainManager.Staleness(epoch: manager.state.epoch, node: nil)
        guard file != manager.state, manager.staleness == nil || file.epoch >= inUse.epoch else { return }
        log("reloads the file at epoch \(file.epoch)")
        manager = ChainManager(state: file, settings: settings, now: clock, inUse: inUse, loaded: true)
    }

    /// Starts persisting the manager's next proposal, if any.
    func propose() {
        guard life.isUp, inFlight == nil, let p = manager.nextProposal(now: clock) else { return }
        inFlight = p
        sim.schedule(.masterPersisted(inc: inc), after: sim.chance(0.05) ? sim.random(20_000_000...200_000_000) : sim.random(300_000...5_000_000))
    }

    func persisted() {
        guard let p = inFlight else { return }
        inFlight = nil
        if file.epoch != manager.state.epoch {
            // The compare-and-swap finds another state in the file (an operator restored one).
            log("compare-and-swap of epoch \(p.epoch) refused: the file holds epoch \(file.epoch)")
            manager.proposalFailed()
            reload()
        } else if sim.chance(0.05) {
            log("persisting epoch \(p.epoch) fails")
            manager.proposalFailed()
        } else {
            store(p)
            manager.proposalPersisted(now: clock)
            log("activated epoch \(p.epoch): \(p.configuration.members.map(\.id.rawValue)), standbys \(p.standbys.map(\.id.rawValue)), history \(p.epochHistory.map { "\($0.epoch):\($0.firstSeq.map { "\($0)" } ?? "?")" })")
        }
        propose()
    }

    /// The compare-and-swap: the file only moves forward.
    private func store(_ p: MasterState) {
        if p.epoch < file.epoch {
            sim.violation("the master's state file went back from epoch \(file.epoch) to \(p.epoch)")
        }
        if parents[p] == nil { parents[p] = manager.state }
        file = p
        snapshots.append(p)
    }

    func receive(_ payload: ClusterSimulation.Payload, from: ClusterSimulation.Process) {
        switch payload {
        case .heartbeat(let beat, let sentAt):
            do throws(CatenaError) {
                let released = manager.leasesReleased
                let reply = try manager.heartbeat(beat, now: clock)
                sim.stats.leasesReleased += manager.leasesReleased - released
                sim.send(.heartbeatReply(reply, sentAt: sentAt), from: .master, to: from)
                propose()
            } catch {
                // Its state is older than the chain's: the node gets an error, adopts nothing.
                if !sim.restoredOldState { sim.violation("the master refused \(beat.node)'s heartbeat with no old state restored: \(error)") }
            }
        case .getConfiguration(let attempt):
            guard manager.staleness == nil else { return }
            sim.send(.configuration(manager.state.configuration, attempt: attempt), from: .master, to: from)
        default:
            break
        }
    }
}
