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

    init(sim: ClusterSimulation, state: MasterState) {
        self.sim = sim
        self.file = state
        self.settings = ChainManager.Settings(failureTimeout: .nanoseconds(Int64(sim.settings.failureTimeout)))
        self.manager = ChainManager(state: state, settings: settings, now: 0)
    }

    /// The manager's clock: nanoseconds since this incarnation started.
    var clock: UInt64 { sim.now - startedAt }

    func running(_ incarnation: Int) -> Bool { incarnation == inc && life.isUp }

    private func log(_ message: @autoclosure () -> String) { sim.log("master: \(message())") }

    func start() {
        startedAt = sim.now
        manager = ChainManager(state: file, settings: settings, now: 0)
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
        propose()
        sim.schedule(.masterTick(inc: inc), after: sim.settings.failureTimeout / 20)
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
        if sim.chance(0.05) {
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
        file = p
    }

    func receive(_ payload: ClusterSimulation.Payload, from: ClusterSimulation.Process) {
        switch payload {
        case .heartbeat(let beat, let sentAt):
            let reply = manager.heartbeat(beat, now: clock)
            sim.send(.heartbeatReply(reply, sentAt: sentAt), from: .master, to: from)
            propose()
        case .getConfiguration(let attempt):
            sim.send(.configuration(manager.state.configuration, attempt: attempt), from: .master, to: from)
        default:
            break
        }
    }
}
