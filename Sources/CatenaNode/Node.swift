import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import CoreMetrics
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// A storage node: its store, its replica of the chain protocol, a server for clients and its
/// predecessor, a replication link to its successor, and the heartbeat that registers it with
/// the master and brings configuration changes.
///
/// Life cycle: ``start(_:logger:)`` opens the store and binds the port; ``run(onReady:)`` serves
/// until its task is cancelled, then drains — new writes are refused, writes already taken get
/// up to two seconds to commit — and closes the store.
public final class Node: Sendable {
    /// The configuration it was started with.
    public let configuration: NodeConfiguration
    /// The address clients and peers reach it at (the advertised one, or the bound one).
    public let address: Address
    let store: Store
    let replica: Replica
    private let server: FrameServer
    private let metricsServer: MetricsServer?
    let logger: Logger
    /// Set when the master removed this node: ``run(onReady:)`` returns as if cancelled.
    private let stopRequested: StopSignal
    /// Raises the store's commit watermark and compacts by garbage ratio.
    private let compaction: CompactionScheduler
    /// When the node started (its status's uptime).
    private let started = ContinuousClock.now
    /// This process's random id in its heartbeats: their send times compare only within one.
    private let incarnation = UInt64.random(in: 1...UInt64.max)
    /// The node's metrics (what `GET /metrics` returns).
    let registry: MetricsRegistry
    /// Client requests' latencies and errors, by operation.
    let requests: RequestInstruments
    /// Questions to the tail about keys with writes in flight here (CRAQ reads).
    let tailVersions: TailVersions

    private init(configuration: NodeConfiguration, address: Address, store: Store, replica: Replica, server: FrameServer,
                 metricsServer: MetricsServer?, compaction: CompactionScheduler,
                 stopRequested: StopSignal, registry: MetricsRegistry, logger: Logger) {
        self.registry = registry
        self.requests = RequestInstruments(registry)
        self.tailVersions = TailVersions(clusterID: configuration.clusterID, me: configuration.id, limits: configuration.connectionLimits)
        self.stopRequested = stopRequested
        self.compaction = compaction
        self.configuration = configuration
        self.address = address
        self.store = store
        self.replica = replica
        self.server = server
        self.metricsServer = metricsServer
        self.logger = logger
    }

    /// Where metrics are served, if anywhere (the real port when configured with port 0).
    public var metricsAddress: Address? {
        metricsServer.map { Address(host: configuration.metrics?.host ?? "127.0.0.1", port: UInt16($0.port)) }
    }

    /// Opens the store (recovering it) and binds the listening socket.
    public static func start(_ configuration: NodeConfiguration, logger: Logger) async throws(CatenaError) -> Node {
        var logger = logger
        logger[metadataKey: LogKey.node.rawValue] = "\(configuration.id)"
        let registry = MetricsRegistry(process: .node)
        var storeConfiguration = configuration.store
        storeConfiguration.metrics = registry.factory
        let store = try await Store.open(storeConfiguration, logger: logger)
        let recent = await Replica.recentRequests(in: store, logger: logger)
        let server: FrameServer
        do {
            server = try await FrameServer.bind(
                host: configuration.listen.host, port: Int(configuration.listen.port), clusterID: configuration.clusterID,
                localID: configuration.id.rawValue, acceptedRoles: [.client, .node], limits: configuration.connectionLimits,
                logger: logger)
        } catch {
            await store.close()
            throw error
        }
        let address = configuration.advertise ?? Address(host: configuration.listen.host, port: UInt16(server.port))
        let seen: SeenChain?
        do {
            seen = try store.loadSeen()
        } catch {
            server.close()
            await store.close()
            throw error
        }
        var settings = NodeStateMachine.Settings()
        settings.maxUncommittedBytes = configuration.maxUncommittedBytes
        settings.limits.requestWindow = UInt64(max(0, configuration.store.requestWindow.nanosecondsClamped))
        let stopRequested = StopSignal()
        let replica = Replica(
            me: configuration.id, store: store, settings: settings, clock: configuration.clock, logger: logger,
            links: LinkSettings(clusterID: configuration.clusterID, maxBatchBytes: configuration.maxReplicationBatchBytes,
                                limits: configuration.connectionLimits, catchUpCompression: configuration.catchUpCompression,
                                catchUpBytesPerSecond: configuration.catchUpBytesPerSecond),
            recentRequests: recent, seen: seen, hop: registry.timer(.replicationHop),
            onStop: { stopRequested.set() })
        let compaction = CompactionScheduler(store: store, settings: configuration.compaction, logger: logger) { [replica] in
            replica.commitWatermark
        }
        var metricsServer: MetricsServer?
        if let metrics = configuration.metrics {
            do {
                metricsServer = try await MetricsServer.bind(metrics, logger: logger, health: { Node.health(of: replica, clock: configuration.clock) }) {
                    Node.renderMetrics(registry, id: configuration.id, replica: replica, store: store, server: server.metrics,
                                       compaction: compaction, clock: configuration.clock)
                }
            } catch {
                server.close()
                await store.close()
                throw error
            }
        }
        return Node(configuration: configuration, address: address, store: store, replica: replica, server: server,
                    metricsServer: metricsServer, compaction: compaction, stopRequested: stopRequested, registry: registry, logger: logger)
    }

    /// The node's view of itself: what `catena node status` prints.
    public func status() -> NodeStatus {
        let snapshot = replica.view.snapshot
        let view = snapshot.node
        let m = replica.currentMetrics
        let now = configuration.clock.nanoseconds
        let disk = store.diskUsage
        let garbage = compaction.metrics.lastGarbage
        let catchUp = snapshot.catchUp.map {
            NodeStatus.CatchUp(records: UInt64($0.recordsInstalled), bytes: UInt64($0.recordBytesInstalled), lagRecords: $0.lag)
        }
        return NodeStatus(
            node: configuration.id.rawValue, version: CatenaBuild.version, chainID: view.configuration?.chainID ?? 0, epoch: view.epoch,
            role: view.role.map { "\($0)" }, standing: view.standing.map { "\($0)" },
            leaseMilliseconds: view.leaseExpiry.flatMap { $0 > now ? ($0 - now) / 1_000_000 : nil },
            readsBlocked: view.readsBlocked, draining: view.draining, durable: store.highestLSN, lastAccepted: m.lastAccepted,
            acknowledged: m.acknowledged, commitWatermark: store.commitWatermark, failure: view.failure?.message,
            segments: UInt32(clamping: disk.segments), diskBytes: disk.bytes, sealedBytes: garbage.sealedBytes,
            garbageBytes: garbage.garbageBytes, uptimeMilliseconds: UInt64(max(0, (ContinuousClock.now - started).nanosecondsClamped / 1_000_000)),
            catchUp: catchUp)
    }

    /// Live unless its log failed (the process then serves nothing but reads of its status);
    /// ready while it may serve clients: a member with a lease, not short of committed writes.
    static func health(of replica: Replica, clock: any NodeClock) -> MetricsServer.Health {
        let view = replica.view.snapshot.node
        let now = clock.nanoseconds
        if let failure = view.failure { return .init(live: false, ready: false, detail: "log failed: \(failure.message)") }
        guard let role = view.role else {
            return .init(live: true, ready: false, detail: view.standing == .joining ? "joining: catching up from the tail" : "not a member of the chain")
        }
        guard view.leaseValid(at: now) else { return .init(live: true, ready: false, detail: "\(role) at epoch \(view.epoch), no lease from the master") }
        guard !view.readsBlocked else { return .init(live: true, ready: false, detail: "\(role), still receiving writes committed before it joined") }
        guard !view.draining else { return .init(live: true, ready: false, detail: "shutting down") }
        return .init(live: true, ready: true, detail: "\(role) at epoch \(view.epoch)")
    }

    /// The node's metrics in Prometheus text format (what `GET /metrics` returns).
    public func renderMetrics() -> String {
        Node.renderMetrics(registry, id: configuration.id, replica: replica, store: store, server: server.metrics,
                           compaction: compaction, clock: configuration.clock)
    }

    /// Copies the state the node's parts keep into `registry`, then renders it: what was
    /// recorded as it happened (request latencies, fsyncs, group commits, replication hops)
    /// is there already.
    static func renderMetrics(_ registry: MetricsRegistry, id: NodeID, replica: Replica, store: Store, server: FrameServerMetrics,
                              compaction: CompactionScheduler, clock: any NodeClock) -> String {
        registry.scrape { r in
            let m = replica.currentMetrics
            let snapshot = replica.view.snapshot
            let view = snapshot.node
            let s = store.metrics
            r.replaceSeries(.nodeInfo, [(labels: [("node", id.rawValue), ("role", view.role.map { "\($0)" } ?? "none")], value: 1)])
            r.set(.nodeEpoch, Double(view.epoch))
            r.set(.nodeFailed, view.failure == nil ? 0 : 1)
            let now = clock.nanoseconds
            r.set(.nodeLeaseRemaining, view.leaseExpiry.map { $0 > now ? Double($0 - now) / 1e9 : 0 } ?? 0)
            r.set(.nodeJoining, view.standing == .joining ? 1 : 0)
            var caughtUp = snapshot.catchUpsBefore
            if let c = snapshot.catchUp { caughtUp.add(c) }
            r.setTotal(.catchUpRecords, caughtUp.records)
            r.setTotal(.catchUpBytes, caughtUp.bytes)
            r.setTotal(.catchUpWireBytes, caughtUp.wireBytes)
            r.set(.catchUpLagRecords, view.standing == .joining ? Double(snapshot.catchUp?.lag ?? 0) : 0)
            r.setTotal(.writesCommitted, m.writesCommitted)
            r.setTotal(.writesRefused, m.writesRefused)
            r.setTotal(.writesThrottled, m.writesThrottled)
            r.setTotal(.recordsReplicated, m.recordsReplicated)
            r.setTotal(.recordsTruncated, m.recordsTruncated)
            r.set(.uncommittedBytes, Double(m.uncommittedBytes))
            r.set(.uncommittedPeakBytes, Double(m.peakUncommittedBytes))
            r.set(.replicationLagRecords, Double(m.lagRecords))
            r.set(.replicationLagBytes, Double(m.inFlightBytes))
            r.set(.replicationLagSeconds, m.lagDuration.secondsValue)
            r.set(.sentRecords, Double(m.sentRecords))
            r.set(.lastAcceptedSeq, Double(m.lastAccepted.seq))
            r.set(.acknowledgedSeq, Double(m.acknowledged.seq))
            r.setTotal(.staleConfigurationsRefused, m.staleConfigurationsRefused)
            r.setTotal(.requestIDsForgottenEarly, m.requestsForgottenEarly)
            r.set(.durableSeq, Double(store.highestLSN.seq))
            r.set(.commitWatermarkSeq, Double(store.commitWatermark.seq))
            r.set(.pendingAppendBytes, Double(store.pendingAppendBytes))
            r.setTotal(.appendedRecords, s.appendedRecords)
            r.setTotal(.appendedBytes, s.appendedBytes)
            r.setTotal(.segmentsSealed, s.segmentsSealed)
            let disk = store.diskUsage
            r.set(.diskBytes, Double(disk.bytes))
            r.set(.segments, Double(disk.segments))
            r.set(.damagedRanges, Double(store.damage.count))
            let k = compaction.metrics
            r.set(.sealedBytes, Double(k.lastGarbage.sealedBytes))
            r.set(.garbageBytes, Double(k.lastGarbage.garbageBytes))
            r.set(.collectableBytes, Double(k.lastGarbage.collectableBytes))
            r.setTotal(.compactions, k.compactions)
            r.setTotal(.compactionFailures, k.compactionFailures)
            r.setTotal(.compactionReclaimedBytes, Int(clamping: k.bytesReclaimed))
            r.setTotal(.watermarkRaises, k.watermarkRaises)
            r.collectServer(server)
        }
    }

    /// Serves until the task is cancelled, its `ServiceGroup` shuts down gracefully, or the
    /// master removes the node (``run(onReady:)`` without a callback: the node as a `Service`).
    public func run() async {
        await run(onReady: { _ in })
    }

    /// Serves until the task is cancelled, its `ServiceGroup` shuts down gracefully, or the
    /// master removes the node. `onReady` runs once, after the master accepted the node's first
    /// heartbeat, with the configuration it returned.
    ///
    /// Shutdown, cancelled or graceful, is ordered so that writes already taken finish:
    /// new writes are refused while taken ones get up to two seconds to commit (the server, the
    /// links and the durability feedback keep running meanwhile); then the listener and every
    /// connection close, the heartbeat stops, and the store is closed.
    public func run(onReady: @escaping @Sendable (ChainConfiguration) -> Void) async {
        logger.info("listening", metadata: .catena([.address: "\(address)"]))
        // Not child tasks: cancelling `run` must not cancel them before the drain below.
        // Each connection's frames are handled on its event loop: writes and replication are
        // handed to the replica without blocking (reads run in tasks of their own elsewhere).
        let serving = Task { await self.server.run(onEventLoops: true) { (connection, reader) async throws(CatenaError) in
            try await self.serve(connection, &reader)
        } }
        let heartbeat = Task { await self.heartbeat(onReady: onReady) }
        let metrics = Task { await self.metricsServer?.run() }
        let compacting = Task { await self.compaction.run() }
        let gracefulShutdown = Atomic<Bool>(false)
        await withGracefulShutdownHandler {
            while !Task.isCancelled, !stopRequested.isSet, !gracefulShutdown.load(ordering: .relaxed) {
                try? await Task.sleep(for: .milliseconds(50))
            }
        } onGracefulShutdown: {
            gracefulShutdown.store(true, ordering: .relaxed)
        }
        logger.notice("shutting down: draining writes")
        await replica.drain(timeout: .seconds(2))
        heartbeat.cancel()
        metricsServer?.close()
        metrics.cancel()
        server.close()
        tailVersions.close()
        serving.cancel()
        await serving.value
        await heartbeat.value
        await metrics.value
        compacting.cancel()
        await compacting.value
        await store.close()
        logger.info("stopped")
    }

    /// The node's server: its connections (clients and peers) and request budget now.
    public var serverMetrics: FrameServerMetrics { server.metrics }

    /// The node's local store, for inspection (replica comparison in tests and tools). Writing
    /// to it directly would bypass the chain.
    public var localStore: Store { store }

    /// The node's role in the configuration it has now (nil before the first configuration).
    public var role: ChainRole? { replica.view.snapshot.role }

    /// The configuration the node has now.
    public var chainConfiguration: ChainConfiguration? { replica.view.snapshot.configuration }

    /// Current replication metrics.
    public var metrics: ReplicaMetrics {
        get async { replica.currentMetrics }
    }

    // MARK: - Master

    /// Heartbeats the master every interval. Each answer — the active configuration, this
    /// node's standing, a lease and the epoch history — goes to the replica's state machine,
    /// which decides everything (adopting the configuration, the lease counted from when the
    /// heartbeat was sent, rejoining, stopping when the master forgot the node). A heartbeat
    /// carries the durable LSN, the epoch the node runs, a new head's epoch start and, if the
    /// local log failed, the failure.
    private func heartbeat(onReady: @Sendable (ChainConfiguration) -> Void) async {
        var connection: RequestConnection?
        var masterIndex = 0
        var ready = false
        var complained = false
        let hello = Hello(role: .node, clusterID: configuration.clusterID, senderID: configuration.id.rawValue)
        let clock = configuration.clock
        while !Task.isCancelled {
            var again = false
            do throws(CatenaError) {
                if connection == nil || connection!.isClosed {
                    let master = configuration.masters[masterIndex % configuration.masters.count]
                    connection = try await RequestConnection.connect(to: master, hello: hello, limits: configuration.connectionLimits)
                }
                let content = replica.heartbeatContent
                let sent = clock.nanoseconds
                let beat = Heartbeat(node: configuration.id, address: address.description, highestLSN: content.position,
                                     epochStart: content.epochStart, failure: content.failure,
                                     leaseless: replica.reportLeaseless(sentAt: sent), sentAt: sent, incarnation: incarnation)
                let chainID = replica.view.snapshot.configuration?.chainID ?? 0
                // The frame's epoch: the configuration this node runs, or the highest it has seen
                // (the master waits for a joined tail's predecessor to run the configuration that
                // made it a middle, and finds out from it that its own state is older).
                let frame = try await connection!.request(Frame(type: .heartbeat, chainID: chainID, epoch: content.epoch,
                                                                payload: beat.encoded()),
                                                          timeout: max(.seconds(2), configuration.heartbeatInterval * 5))
                guard frame.type == .configuration else {
                    throw CatenaError(.protocolViolation, "the master answered a heartbeat with \(frame.type)")
                }
                let reply = try HeartbeatReply(decoding: frame.payload)
                replica.heartbeatReplied(NodeStateMachine.Reply(reply), sentAt: sent)
                complained = false
                if reply.standing != .unknown {
                    // A new configuration is persisted before it is adopted: let that finish, then
                    // a new head reports where its epoch starts at once (it takes no writes until
                    // the master has recorded it).
                    await replica.settle(timeout: configuration.heartbeatInterval)
                    if let configuration = replica.configuration, !ready {
                        ready = true
                        onReady(configuration)
                    }
                    if let next = replica.heartbeatContent.epochStart, next != content.epochStart { again = true }
                }
                if stopRequested.isSet { break }
            } catch {
                connection?.close()
                connection = nil
                masterIndex += 1
                if Task.isCancelled { break }
                if error.code == .staleEpoch {
                    // The master's state is older than the chain's: adopt nothing from it; the
                    // lease runs out and this node stops serving until a current master answers.
                    if !complained {
                        logger.error("the master's state is older than this chain's; adopting nothing from it", metadata: .catena([.error: "\(error)"]))
                    }
                    complained = true
                } else if !complained || error.code != .unavailable {
                    logger.warning("heartbeat failed", metadata: .catena([.error: "\(error)"]))
                    complained = true
                }
            }
            if !again { try? await Task.sleep(for: configuration.heartbeatInterval) }
        }
        connection?.close()
    }
}

/// Set once, read from anywhere: the master removed this node.
final class StopSignal: Sendable {
    private let flag = Mutex(false)

    func set() { flag.withLock { $0 = true } }
    var isSet: Bool { flag.withLock { $0 } }
}

extension NodeStateMachine.Reply {
    /// The machine's view of a heartbeat reply from the wire.
    init(_ reply: HeartbeatReply) {
        let standing: NodeStateMachine.Standing = switch reply.standing {
        case .member: .member
        case .joining: .joining
        case .unknown: .unknown
        }
        self.init(configuration: reply.configuration, standing: standing, lease: reply.lease, history: reply.history)
    }
}

/// A node runs as a `Service` in a `ServiceGroup`: a graceful shutdown (SIGTERM) drains the
/// writes it took and closes its store, as cancellation does.
extension Node: Service {}
