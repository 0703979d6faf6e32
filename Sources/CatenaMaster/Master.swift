import CatenaCluster
import CatenaCore
import CatenaNetwork
import CatenaWire
import Logging
import ServiceLifecycle
import Synchronization

/// What the master needs to run.
public struct MasterConfiguration: Sendable {
    /// The cluster; peers of other clusters are refused.
    public var clusterID: String
    /// Where to listen; port 0 picks a free port.
    public var listen: Address
    /// The directory holding the persisted configuration (`master.json`) and the `LOCK` the
    /// running master holds on it.
    public var dataDirectory: String
    /// Where to serve Prometheus metrics (`GET /metrics`); nil: nowhere.
    public var metrics: Address?
    /// The configuration to start from when the data directory holds none (the topology's).
    /// Once saved, the saved state wins.
    public var initial: ChainConfiguration
    /// Heartbeat interval and failure timeout (the topology's `heartbeat`).
    public var heartbeat = HeartbeatSettings()
    /// The lease granted per heartbeat; nil: the failure timeout. At most the failure timeout,
    /// so a member declared failed holds no lease any more. While the master is down, members
    /// serve until their lease runs out.
    public var lease: Duration?
    /// A joining node is appended once it is at most this many records behind the tail.
    public var catchUpLagRecords: UInt64 = 256
    /// Where the state is kept; nil: `master.json` in ``dataDirectory``.
    public var stateStore: (any MasterStateStore)?

    /// Creates a configuration.
    public init(clusterID: String, listen: Address, dataDirectory: String, initial: ChainConfiguration) {
        self.clusterID = clusterID
        self.listen = listen
        self.dataDirectory = dataDirectory
        self.initial = initial
        self.metrics = nil
    }
}

/// The master: holds the chain configuration (epoch, ordered members and their addresses),
/// persists every change before announcing it, serves it to clients and nodes, takes node
/// heartbeats (liveness, real addresses, highest LSNs, leases), detects failed members and
/// reconfigures the chain, appends caught-up joiners, and answers operators (`catena chain`).
/// The decisions are ``ChainManager``'s, a pure state machine; this type does the I/O.
public final class Master: Sendable {
    /// The bound address.
    public let address: Address
    private let core: MasterCore
    private let server: FrameServer
    private let metricsServer: MetricsServer?
    /// The master's metrics (what `GET /metrics` returns).
    private let registry: MetricsRegistry
    private let logger: Logger
    /// The data directory's lock, held from ``start(_:logger:)`` until ``run()`` ends.
    private let directoryLock: MasterDirectoryLock

    private init(address: Address, core: MasterCore, server: FrameServer, metricsServer: MetricsServer?, registry: MetricsRegistry, logger: Logger,
                 directoryLock: MasterDirectoryLock) {
        self.address = address
        self.core = core
        self.server = server
        self.metricsServer = metricsServer
        self.registry = registry
        self.logger = logger
        self.directoryLock = directoryLock
    }

    /// The master's metrics in Prometheus text format (what `GET /metrics` returns).
    public func renderMetrics() async -> String {
        await core.renderMetrics(registry, server: server.metrics)
    }

    /// Where metrics are served, if anywhere (the real port when configured with port 0).
    public var metricsAddress: Address? {
        metricsServer.map { Address(host: "127.0.0.1", port: UInt16($0.port)) }
    }

    /// Locks the data directory, loads (or creates and persists) the configuration and binds the
    /// port. A data directory another master holds is ``CatenaError/Code/directoryLocked``.
    public static func start(_ configuration: MasterConfiguration, logger: Logger) async throws(CatenaError) -> Master {
        let directoryLock = try MasterDirectoryLock.acquire(configuration.dataDirectory)
        let file: any MasterStateStore = configuration.stateStore ?? MasterStateFile(directory: configuration.dataDirectory)
        let state: MasterState
        let loaded: Bool
        if let saved = try file.load(clusterID: configuration.clusterID, chainID: configuration.initial.chainID) {
            state = saved
            loaded = true
            if saved.configuration.members.map(\.id) != configuration.initial.members.map(\.id) {
                logger.notice("the saved configuration overrides the topology file", metadata: .catena([
                    .savedMembers: "\(saved.configuration.members.map(\.id.rawValue))",
                    .topologyMembers: "\(configuration.initial.members.map(\.id.rawValue))",
                ]))
            }
        } else {
            state = MasterState(initial: configuration.initial)
            loaded = false
            try file.compareAndSwap(expectedEpoch: nil, new: state)
            logger.notice("saved the initial configuration", metadata: .catena([.epoch: "\(state.epoch)", .path: "\(file.location)"]))
        }
        let server = try await FrameServer.bind(
            host: configuration.listen.host, port: Int(configuration.listen.port), clusterID: configuration.clusterID,
            localID: "master", acceptedRoles: [.client, .node, .master], allowsClusterDiscovery: true, logger: logger)
        let address = Address(host: configuration.listen.host, port: UInt16(server.port))
        let lease = configuration.lease ?? configuration.heartbeat.timeout
        guard lease <= configuration.heartbeat.timeout, lease > .zero else {
            server.close()
            throw CatenaError(.invalidArgument, "the lease (\(lease)) must be positive and at most the failure timeout (\(configuration.heartbeat.timeout))")
        }
        let settings = ChainManager.Settings(failureTimeout: configuration.heartbeat.timeout, lease: lease,
                                             catchUpLagRecords: configuration.catchUpLagRecords)
        let core = MasterCore(state: state, loaded: loaded, settings: settings, file: file, logger: logger)
        var metricsServer: MetricsServer?
        let registry = MetricsRegistry(process: .master)
        if let metrics = configuration.metrics {
            do {
                // Ready as soon as it serves: whether the chain is available is the chain's health, not
                // the master's (a probe that restarted the master for it would only add a fault).
                let health: @Sendable () async -> MetricsServer.Health = {
                    let (s, stale) = await (core.status(), core.isStale)
                    if stale {
                        return .init(live: true, ready: false, detail: "the master's state is older than the chain's: it hands out no configuration (see its log)")
                    }
                    return .init(live: true, ready: true,
                                 detail: "master of chain \(s.chainID) at epoch \(s.epoch); the chain is \(s.available ? "available" : "UNAVAILABLE")")
                }
                metricsServer = try await MetricsServer.bind(metrics, logger: logger, health: health) {
                    await core.renderMetrics(registry, server: server.metrics)
                }
            } catch {
                server.close()
                throw error
            }
        }
        return Master(address: address, core: core, server: server, metricsServer: metricsServer, registry: registry, logger: logger,
                      directoryLock: directoryLock)
    }

    /// The current configuration.
    public var configuration: ChainConfiguration {
        get async { await core.state.configuration }
    }

    /// The chain's status: every member and joining node, as `catena chain status` shows it.
    public var status: ChainStatus {
        get async { await core.status() }
    }

    /// Serves until the task is cancelled or its `ServiceGroup` shuts down gracefully.
    public func run() async {
        logger.info("master listening", metadata: .catena([.address: "\(address)"]))
        let serving = Task {
            await self.server.run { (connection, reader) async throws(CatenaError) in
                try await self.serve(connection, &reader)
            }
        }
        let metrics = Task { await self.metricsServer?.run() }
        // Failure detection and reconfiguration run on a tick: a twentieth of the failure timeout.
        let tick = max(.milliseconds(5), core.settings.failureTimeout / 20)
        let gracefulShutdown = Atomic<Bool>(false)
        await withGracefulShutdownHandler {
            while !Task.isCancelled, !gracefulShutdown.load(ordering: .relaxed) {
                await core.advance()
                try? await Task.sleep(for: tick)
            }
        } onGracefulShutdown: {
            gracefulShutdown.store(true, ordering: .relaxed)
        }
        server.close()
        metricsServer?.close()
        serving.cancel()
        metrics.cancel()
        await serving.value
        await metrics.value
        directoryLock.release()
        logger.info("master stopped")
    }

    private func serve(_ connection: ServerConnection, _ reader: inout FrameReader) async throws(CatenaError) {
        while let frame = try await reader.next() {
            let reply: Frame
            do throws(CatenaError) {
                switch frame.type {
                case .getConfiguration:
                    reply = configurationFrame(try await core.configurationForClients(), replyingTo: frame)
                case .heartbeat:
                    guard connection.peer.role == .node else {
                        throw CatenaError(.protocolViolation, "only nodes heartbeat")
                    }
                    let chain = await core.state.chainID
                    guard frame.chainID == 0 || frame.chainID == chain else {
                        throw CatenaError(.invalidArgument, "this master serves chain \(chain), not chain \(frame.chainID)")
                    }
                    let beat = try Heartbeat(decoding: frame.payload)
                    guard beat.node.rawValue == connection.peer.senderID else {
                        throw CatenaError(.protocolViolation, "\(connection.peer.senderID) sent a heartbeat for \(beat.node)")
                    }
                    let answer = try await core.heartbeat(beat, epoch: frame.epoch)
                    reply = Frame(type: .configuration, flags: .reply, chainID: answer.configuration.chainID, requestID: frame.requestID,
                                  epoch: answer.configuration.epoch, payload: answer.encoded())
                case .addNode, .removeNode, .getStatus:
                    let status: ChainStatus
                    if frame.type == .getStatus {
                        status = await core.status()
                    } else {
                        let request = try NodeRequest(decoding: frame.payload)
                        status = try await frame.type == .addNode ? core.addNode(request.node, address: request.address) : core.removeNode(request.node)
                    }
                    reply = Frame(type: .chainStatus, flags: .reply, chainID: await core.state.chainID, requestID: frame.requestID,
                                  epoch: status.epoch, payload: status.encoded())
                case .ping:
                    reply = Frame(type: .pong, flags: .reply, requestID: frame.requestID)
                default:
                    // Not a request the master knows: refuse it and end the connection.
                    throw CatenaError(.unknownFrameType, "the master does not take frame type \(frame.type.rawValue)")
                }
            } catch {
                if error.code == .unknownFrameType || error.code == .protocolViolation { throw error }
                reply = Frame.error(error, replyingTo: frame.requestID)
            }
            do {
                try await connection.outbound.write(reply)
            } catch {
                throw CatenaError(.unavailable, "connection lost: \(error)")
            }
        }
    }

    private func configurationFrame(_ configuration: ChainConfiguration, replyingTo frame: Frame) -> Frame {
        Frame(type: .configuration, flags: .reply, chainID: configuration.chainID, requestID: frame.requestID,
              epoch: configuration.epoch, payload: ConfigurationPayload.encode(configuration))
    }
}

/// The master's state: a ``ChainManager`` (the decisions) and the file its states are persisted
/// to. Every proposal is persisted (compare-and-swap on the epoch) before it becomes the active
/// state that replies carry.
actor MasterCore {
    private var manager: ChainManager
    let settings: ChainManager.Settings
    private let file: any MasterStateStore
    private let logger: Logger
    private let origin = ContinuousClock.now
    /// The manager's last pause already logged.
    private var loggedPause: ChainManager.Pause?
    /// Whether the active state is older than the chain's (it then hands out nothing).
    var isStale: Bool { manager.staleness != nil }

    /// The manager's staleness as last logged.
    private var loggedStaleness: ChainManager.Staleness?

    /// `loaded`: the state was read from the store (see ``ChainManager/init(state:settings:now:inUse:loaded:)``).
    init(state: MasterState, loaded: Bool, settings: ChainManager.Settings, file: any MasterStateStore, logger: Logger) {
        self.settings = settings
        self.file = file
        self.logger = logger
        self.manager = ChainManager(state: state, settings: settings, now: 0, loaded: loaded)
    }

    /// The active (persisted) state.
    var state: MasterState { manager.state }

    /// The manager's clock: nanoseconds since this master started.
    private var now: UInt64 { UInt64((ContinuousClock.now - origin).nanosecondsClamped) }

    /// The configuration for clients; refused (``CatenaError/Code/staleEpoch``) while the
    /// master's state is older than the chain's.
    func configurationForClients() throws(CatenaError) -> ChainConfiguration {
        if let staleness = manager.staleness { throw staleness.error(state: manager.state) }
        return manager.state.configuration
    }

    /// A node's heartbeat: recorded, then anything it makes necessary (an epoch start, a new
    /// address) is persisted before the reply — which carries only persisted state.
    /// `epoch`: the configuration epoch the node runs, from the heartbeat frame's header.
    /// Refused with ``CatenaError/Code/staleEpoch`` while the master's state is older than the
    /// chain's (which this heartbeat may be the first to show).
    func heartbeat(_ beat: Heartbeat, epoch: UInt64) throws(CatenaError) -> HeartbeatReply {
        let first: ChainManager.Reply
        do throws(CatenaError) {
            first = try manager.heartbeat(ChainManager.Beat(node: beat.node, address: beat.address, highestLSN: beat.highestLSN,
                                                            epochStart: beat.epochStart, epoch: epoch, failure: beat.failure,
                                                            leaseless: beat.leaseless, sentAt: beat.sentAt, incarnation: beat.incarnation), now: now)
        } catch {
            noteStaleness()
            throw error
        }
        notePause()
        guard advance() else { return reply(first) }
        // The state changed: answer from the new one.
        return reply(try manager.reply(to: beat.node, granted: first.lease))
    }

    private func reply(_ r: ChainManager.Reply) -> HeartbeatReply {
        let standing: NodeStanding = switch r.standing {
        case .member: .member
        case .joining: .joining
        case .unknown: .unknown
        }
        return HeartbeatReply(configuration: r.configuration, standing: standing, lease: r.lease, history: EpochHistory(r.history))
    }

    /// Persists and activates whatever the manager proposes, one proposal after another.
    /// Returns whether the active state changed.
    ///
    /// A compare-and-swap refused because the stored epoch is not the active one means another
    /// master or an operator changed the stored state: the master reloads it rather than retry
    /// a proposal made from an older one. While its state is older than the chain's, it
    /// proposes nothing and looks for a newer stored state on every call.
    @discardableResult
    func advance() -> Bool {
        var changed = false
        defer {
            notePause()
            noteStaleness()
        }
        if manager.staleness != nil {
            manager.tick(now: now)
            return reload()
        }
        while let proposal = manager.nextProposal(now: now) {
            let old = manager.state
            do throws(CatenaError) {
                try file.compareAndSwap(expectedEpoch: old.epoch, new: proposal)
            } catch {
                manager.proposalFailed()
                if error.code == .staleEpoch {
                    logger.warning("another master or an operator changed the stored configuration; reloading it", metadata: .catena([
                        .error: "\(error)", .epoch: "\(old.epoch)", .path: "\(file.location)",
                    ]))
                    return reload() || changed
                }
                logger.error("could not persist the next configuration; retrying", metadata: .catena([.error: "\(error)", .epoch: "\(proposal.epoch)"]))
                return changed
            }
            manager.proposalPersisted(now: now)
            changed = true
            log(old, proposal)
        }
        return changed
    }

    /// Rebuilds the manager over the stored state if it differs from the active one — as a
    /// restarted master would: leases held for one lease, silence counted from now, barriers
    /// re-armed from the stored state; drains and adds not yet persisted are lost (the operator
    /// asks again). A stored state older than one this master activated, or than what the chain
    /// runs, is stale (see ``ChainManager/staleness``). Returns whether the active state changed.
    private func reload() -> Bool {
        let stored: MasterState?
        do throws(CatenaError) {
            stored = try file.load(clusterID: manager.state.clusterID, chainID: manager.state.chainID)
        } catch {
            logger.error("could not reload the master state", metadata: .catena([.error: "\(error)", .path: "\(file.location)"]))
            return false
        }
        guard let stored else {
            logger.error("the master state is gone from its store; keeping the one in memory", metadata: .catena([.path: "\(file.location)"]))
            return false
        }
        let inUse = manager.staleness ?? ChainManager.Staleness(epoch: manager.state.epoch, node: nil)
        guard stored != manager.state, manager.staleness == nil || stored.epoch >= inUse.epoch else { return false }
        let old = manager.state
        manager = ChainManager(state: stored, settings: settings, now: now, inUse: inUse, loaded: true)
        logger.notice("reloaded the stored configuration", metadata: .catena([
            .epoch: "\(stored.epoch)", .previousEpoch: "\(old.epoch)",
            .members: "\(stored.configuration.members.map(\.id.rawValue))", .path: "\(file.location)",
        ]))
        return true
    }

    /// Logs, once, that the master's state turned out older than the chain's, and when that ends.
    private func noteStaleness() {
        let staleness = manager.staleness
        defer { loggedStaleness = staleness }
        if let staleness, loggedStaleness == nil {
            logger.error("\(staleness.error(state: manager.state).message)", metadata: .catena([
                .epoch: "\(manager.state.epoch)", .nodeEpoch: "\(staleness.epoch)",
                .node: "\(staleness.node.map(\.rawValue) ?? "-")", .path: "\(file.location)",
            ]))
        } else if staleness == nil, loggedStaleness != nil {
            logger.notice("the master's state is as new as the chain's again", metadata: .catena([.epoch: "\(manager.state.epoch)"]))
        }
    }

    /// Logs a pause of the master the manager noticed, once.
    private func notePause() {
        guard let pause = manager.lastPause, pause != loggedPause else { return }
        loggedPause = pause
        logger.warning("the master did not run for a while (stopped, suspended or starved of CPU); members' silence counts from now, and each keeps its lease for one more lease", metadata: .catena([
            .pauseMilliseconds: "\(pause.length / 1_000_000)",
        ]))
    }

    private func log(_ old: MasterState, _ new: MasterState) {
        let ids = { (s: MasterState) in s.configuration.members.map(\.id.rawValue) }
        if old.epoch != new.epoch {
            let removed = old.configuration.members.filter { m in !new.configuration.members.contains { $0.id == m.id } }
            let added = new.configuration.members.filter { m in !old.configuration.members.contains { $0.id == m.id } }
            logger.notice("activated a new configuration", metadata: .catena([
                .epoch: "\(new.epoch)", .members: "\(ids(new))",
                .removed: "\(removed.map(\.id.rawValue))", .added: "\(added.map(\.id.rawValue))",
            ]))
        } else if old.epochHistory != new.epochHistory {
            logger.info("recorded where the epoch starts", metadata: .catena([
                .epoch: "\(new.epoch)", .firstSeq: "\(new.epochHistory.last?.firstSeq.map { "\($0)" } ?? "?")",
            ]))
        } else if old.standbys != new.standbys {
            logger.notice("standbys changed", metadata: .catena([.standbys: "\(new.standbys.map(\.id.rawValue))"]))
        } else if old.catchingUp != new.catchingUp {
            logger.info("recorded which members may still lack committed writes", metadata: .catena([
                .catchingUp: "\(new.catchingUp.map(\.rawValue).sorted())",
            ]))
        }
    }

    /// An operator adds a node.
    func addNode(_ id: NodeID, address: String) throws(CatenaError) -> ChainStatus {
        try manager.addNode(id, address: address)
        advance()
        logger.notice("operator added a node", metadata: .catena([.node: "\(id)", .address: "\(address)"]))
        return status()
    }

    /// An operator removes a node (gracefully, once its lease has run out).
    func removeNode(_ id: NodeID) throws(CatenaError) -> ChainStatus {
        try manager.removeNode(id, now: now)
        notePause()
        advance()
        logger.notice("operator removes a node", metadata: .catena([.node: "\(id)"]))
        return status()
    }

    /// The chain's status for operators.
    func status() -> ChainStatus {
        let t = now
        let reports = manager.status(now: t)
        func ms(_ ns: UInt64?) -> UInt64? { ns.map { $0 / 1_000_000 } }
        let nodes = reports.map { r in
            ChainStatus.Node(id: r.id, address: r.address, role: r.role, highestLSN: r.highestLSN ?? .zero, lagRecords: r.lag ?? 0,
                             heartbeatAgeMilliseconds: ms(r.sinceHeartbeat), leaseMilliseconds: ms(r.leaseRemaining),
                             health: Self.health(r.health), reason: reason(r))
        }
        let why = manager.unavailableReason(now: t)
        return ChainStatus(chainID: manager.state.chainID, epoch: manager.state.epoch, available: why == nil,
                           failureTimeoutMilliseconds: UInt64(settings.failureTimeout.nanosecondsClamped / 1_000_000),
                           leaseMilliseconds: UInt64(settings.lease.nanosecondsClamped / 1_000_000), nodes: nodes, reason: why)
    }

    /// What status says about a node beyond its health: the failure it reported, or that it is
    /// catching up.
    private func reason(_ r: ChainManager.NodeReport) -> String? {
        if let failure = r.failure { return "reported \(failure.code): \(failure.message)" }
        if r.role != nil && manager.isCatchingUp(r.id) {
            return "joined and catching up: no lease until it holds what its predecessor held when it joined"
        }
        return nil
    }

    private static func health(_ h: ChainManager.Health) -> ChainStatus.Health {
        switch h {
        case .healthy: .healthy
        case .suspect: .suspect
        case .failed: .failed
        case .leaving: .leaving
        case .joining: .joining
        }
    }

    /// The master's metrics in Prometheus text format: the epoch, whether its state is stale, its
    /// pauses, the changes it made, per node the time since its last heartbeat, its highest LSN,
    /// its lag behind the most advanced member and health; and what its listener holds (`server`).
    func renderMetrics(_ registry: MetricsRegistry, server: FrameServerMetrics) -> String {
        registry.scrape { r in
            let s = status()
            r.set(.masterEpoch, Double(s.epoch))
            r.set(.masterMembers, Double(s.nodes.filter { $0.role != nil }.count))
            r.set(.chainAvailable, s.available ? 1 : 0)
            r.setTotal(.reconfigurations, manager.changes.reconfigurations)
            r.setTotal(.failovers, manager.changes.failovers)
            r.setTotal(.drains, manager.changes.drains)
            r.setTotal(.joins, manager.changes.joins)
            r.setTotal(.leasesReleased, manager.leasesReleased)
            r.replaceSeries(.memberHeartbeatAge, s.nodes.compactMap { n in n.heartbeatAgeMilliseconds.map { ([("node", n.id.rawValue)], Double($0) / 1e3) } })
            r.replaceSeries(.memberHighestSeq, s.nodes.map { ([("node", $0.id.rawValue)], Double($0.highestLSN.seq)) })
            r.replaceSeries(.memberLagRecords, s.nodes.map { ([("node", $0.id.rawValue)], Double($0.lagRecords)) })
            r.replaceSeries(.memberHealthy, s.nodes.map { ([("node", $0.id.rawValue)], $0.health == .healthy ? 1 : 0) })
            r.set(.stateStale, manager.staleness == nil ? 0 : 1)
            r.set(.lastPause, Double(manager.lastPause?.length ?? 0) / 1e9)
            r.collectServer(server)
        }
    }
}

/// The master runs as a `Service` in a `ServiceGroup`; a graceful shutdown stops it as
/// cancellation does.
extension Master: Service {}
