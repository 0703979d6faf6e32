import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
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
    private let logger: Logger
    /// Set when the master removed this node: ``run(onReady:)`` returns as if cancelled.
    private let stopRequested: StopSignal
    /// Raises the store's commit watermark and compacts by garbage ratio.
    private let compaction: CompactionScheduler
    /// When the node started (its status's uptime).
    private let started = ContinuousClock.now
    /// This process's random id in its heartbeats: their send times compare only within one.
    private let incarnation = UInt64.random(in: 1...UInt64.max)

    private init(configuration: NodeConfiguration, address: Address, store: Store, replica: Replica, server: FrameServer,
                 metricsServer: MetricsServer?, compaction: CompactionScheduler,
                 stopRequested: StopSignal, logger: Logger) {
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
        logger[metadataKey: LogKey.node] = "\(configuration.id)"
        let store = try await Store.open(configuration.store, logger: logger)
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
            recentRequests: recent, seen: seen,
            onStop: { stopRequested.set() })
        let compaction = CompactionScheduler(store: store, settings: configuration.compaction, logger: logger) { [replica] in
            replica.commitWatermark
        }
        var metricsServer: MetricsServer?
        if let metrics = configuration.metrics {
            do {
                metricsServer = try await MetricsServer.bind(metrics, logger: logger, health: { Node.health(of: replica, clock: configuration.clock) }) {
                    await Node.renderMetrics(id: configuration.id, replica: replica, store: store, server: server,
                                             compaction: compaction, clock: configuration.clock)
                }
            } catch {
                server.close()
                await store.close()
                throw error
            }
        }
        return Node(configuration: configuration, address: address, store: store, replica: replica, server: server,
                    metricsServer: metricsServer, compaction: compaction, stopRequested: stopRequested, logger: logger)
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
    static func renderMetrics(id: NodeID, replica: Replica, store: Store, server: FrameServer, compaction: CompactionScheduler,
                              clock: any NodeClock) async -> String {
        let m = replica.currentMetrics
        let snapshot = replica.view.snapshot
        let view = snapshot.node
        let s = store.metrics
        var t = MetricsText()
        t.add("catena_node_info", "gauge", "This node's id and role (value 1).",
              [([("node", id.rawValue), ("role", view.role.map { "\($0)" } ?? "none")], 1)])
        t.gauge("catena_node_epoch", "The configuration epoch this node runs.", Double(view.epoch))
        t.gauge("catena_node_failed", "1 if the local log failed and the node stopped taking writes.", view.failure == nil ? 0 : 1)
        let now = clock.nanoseconds
        let lease = view.leaseExpiry.map { $0 > now ? Double($0 - now) / 1e9 : 0 } ?? 0
        t.gauge("catena_node_lease_remaining_seconds", "Seconds of lease left from the master (0: none; the node serves no clients).", lease)
        t.gauge("catena_node_joining", "1 while the node is not a member and catches up from the tail.", view.standing == .joining ? 1 : 0)
        if let c = snapshot.catchUp {
            t.counter("catena_node_catch_up_records_total", "Records copied from the tail while joining.", c.recordsInstalled)
            t.counter("catena_node_catch_up_bytes_total", "Bytes of records copied from the tail while joining.", c.recordBytesInstalled)
            t.counter("catena_node_catch_up_wire_bytes_total", "Bytes received for them (LZ4-compressed chunks).", c.wireBytes)
            t.gauge("catena_node_catch_up_lag_records", "Records the tail had that this node lacked at the last chunk.", Double(c.lag ?? 0))
        }
        t.counter("catena_node_writes_committed_total", "Writes committed with this node as head.", m.writesCommitted)
        t.counter("catena_node_writes_refused_total", "Writes refused (redirect, invalid, busy, failure).", m.writesRefused)
        t.counter("catena_node_writes_throttled_total", "Writes that waited under the uncommitted-bytes bound.", m.writesThrottled)
        t.counter("catena_node_records_replicated_total", "Records applied from the predecessor.", m.recordsReplicated)
        t.counter("catena_node_records_truncated_total", "Records removed by truncations (writes the chain never committed, discarded logs).", m.recordsTruncated)
        t.gauge("catena_node_uncommitted_bytes", "Bytes of writes taken at the head and not yet committed.", Double(m.uncommittedBytes))
        t.gauge("catena_node_uncommitted_bytes_peak", "The most uncommitted bytes so far.", Double(m.peakUncommittedBytes))
        t.gauge("catena_node_in_flight_bytes", "Bytes forwarded and not yet acknowledged by the successor.", Double(m.inFlightBytes))
        t.gauge("catena_node_last_accepted_seq", "Seq of the last record accepted into the local log.", Double(m.lastAccepted.seq))
        t.gauge("catena_node_acknowledged_seq", "Seq through which this node acknowledged upstream (the head: committed).", Double(m.acknowledged.seq))
        t.gauge("catena_store_durable_seq", "Seq of the highest durable record.", Double(store.highestLSN.seq))
        t.gauge("catena_store_pending_append_bytes", "Bytes enqueued in the store and not yet durable.", Double(store.pendingAppendBytes))
        t.counter("catena_store_appended_records_total", "Records made durable.", s.appendedRecords)
        t.counter("catena_store_appended_bytes_total", "Bytes of records made durable.", s.appendedBytes)
        t.counter("catena_store_group_commits_total", "Group commits (write + sync rounds).", s.batches)
        t.counter("catena_store_fsyncs_total", "fsyncs of segments and directories.", s.syncs)
        t.counter("catena_store_segments_sealed_total", "Segments sealed.", s.segmentsSealed)
        t.gauge("catena_store_damage_reports", "Damaged stretches found in the log (never served).", Double(store.damage.count))
        t.counter("catena_node_stale_configurations_refused_total",
                  "Master configurations refused as older than one this node has seen (a master state restored from an old backup?).",
                  m.staleConfigurationsRefused)
        t.counter("catena_node_request_ids_forgotten_early_total",
                  "Request ids forgotten inside the request window because of the memory cap (their retries are not recognised).",
                  m.requestsForgottenEarly)
        let c = compaction.metrics
        t.gauge("catena_store_commit_watermark_seq", "Seq of the persisted commit watermark (on every replica; compaction may drop below it).",
                Double(store.commitWatermark.seq))
        t.gauge("catena_store_sealed_bytes", "Bytes of sealed segments.", Double(c.lastGarbage.sealedBytes))
        t.gauge("catena_store_garbage_bytes", "Bytes of superseded versions and tombstones in sealed segments.", Double(c.lastGarbage.garbageBytes))
        t.gauge("catena_store_collectable_bytes", "Garbage bytes compaction may give back now.", Double(c.lastGarbage.collectableBytes))
        t.counter("catena_store_compactions_total", "Compactions run by the scheduler.", c.compactions)
        t.counter("catena_store_compaction_failures_total", "Compactions that failed.", c.compactionFailures)
        t.counter("catena_store_compaction_reclaimed_bytes_total", "Bytes compactions gave back.", Int(clamping: c.bytesReclaimed))
        t.counter("catena_store_watermark_raises_total", "Commit watermark raises persisted.", c.watermarkRaises)
        let n = server.metrics
        t.gauge("catena_server_connections", "Connections open now (handshaking, clients and peers).", Double(n.openConnections))
        t.gauge("catena_server_client_connections", "Established client connections now.", Double(n.clientConnections))
        t.counter("catena_server_connections_refused_total", "Connections refused busy at the connection cap.", n.refusedConnections)
        t.counter("catena_server_idle_closed_total", "Client connections closed by the idle timeout.", n.idleClosedConnections)
        t.gauge("catena_server_request_bytes_in_progress", "Bytes of requests admitted and not yet answered.", Double(n.admission.bytesInProgress))
        t.gauge("catena_server_request_bytes_in_progress_peak", "The most request bytes in progress so far.", Double(n.admission.peakBytesInProgress))
        t.gauge("catena_server_connections_waiting", "Connections not read until request bytes are released.", Double(n.admission.waitingConnections))
        return t.text
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
        logger.info("listening", metadata: [LogKey.address: "\(address)"])
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
        logger.info("shutting down: draining writes")
        await replica.drain(timeout: .seconds(2))
        heartbeat.cancel()
        metricsServer?.close()
        metrics.cancel()
        server.close()
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
                        logger.error("the master's state is older than this chain's; adopting nothing from it", metadata: ["error": "\(error)"])
                    }
                    complained = true
                } else if !complained || error.code != .unavailable {
                    logger.warning("heartbeat failed", metadata: ["error": "\(error)"])
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
