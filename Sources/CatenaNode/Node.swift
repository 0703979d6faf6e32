import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import Logging
import NIOCore
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
    private let logger: Logger
    private let tickets: AsyncStream<(AppendTicket, LSN)>

    private init(configuration: NodeConfiguration, address: Address, store: Store, replica: Replica, server: FrameServer,
                 tickets: AsyncStream<(AppendTicket, LSN)>, logger: Logger) {
        self.configuration = configuration
        self.address = address
        self.store = store
        self.replica = replica
        self.server = server
        self.tickets = tickets
        self.logger = logger
    }

    /// Opens the store (recovering it) and binds the listening socket.
    public static func start(_ configuration: NodeConfiguration, logger: Logger) async throws(CatenaError) -> Node {
        var logger = logger
        logger[metadataKey: LogKey.node] = "\(configuration.id)"
        let store = try await Store.open(configuration.store, logger: logger)
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
        let recent: [ReplicaStateMachine.Commit]
        do {
            recent = try await recentRequests(in: store, limit: ReplicaStateMachine.Limits().rememberedRequests)
        } catch {
            await store.close()
            throw error
        }
        let (tickets, ticketSink) = AsyncStream<(AppendTicket, LSN)>.makeStream()
        let replica = Replica(
            me: configuration.id, store: store, maxUncommittedBytes: configuration.maxUncommittedBytes, logger: logger,
            durableTickets: ticketSink,
            links: LinkSettings(clusterID: configuration.clusterID, maxBatchBytes: configuration.maxReplicationBatchBytes,
                                limits: configuration.connectionLimits),
            recentRequests: recent)
        return Node(configuration: configuration, address: address, store: store, replica: replica, server: server,
                    tickets: tickets, logger: logger)
    }

    /// The request ids of the last records of `store`'s log (at most `limit` records, read from
    /// at most the last 256 MiB of segments), in LSN order: what a restarted node needs to answer
    /// retries exactly once.
    private static func recentRequests(in store: Store, limit: Int) async throws(CatenaError) -> [ReplicaStateMachine.Commit] {
        let last = store.lastEnqueuedLSN
        guard last != .zero else { return [] }
        var start = LSN(epoch: 0, seq: last.seq > UInt64(limit) ? last.seq - UInt64(limit) : 0)
        var bytes: UInt64 = 0
        for segment in store.segments.reversed() {
            bytes += segment.byteSize
            if bytes > 256 << 20 {
                start = LSN(epoch: 0, seq: max(start.seq, segment.lastLSN.seq))
                break
            }
        }
        start = LSN(epoch: 0, seq: max(start.seq, store.compactedThrough.seq))
        var out: [ReplicaStateMachine.Commit] = []
        var records = try store.records(after: start).makeAsyncIterator()
        while let r = try await records.nextRecord() {
            if r.header.requestID != .none { out.append(.init(requestID: r.header.requestID, lsn: r.lsn)) }
        }
        return out
    }

    /// Serves until the task is cancelled. `onReady` runs once, after the master accepted the
    /// node's first heartbeat, with the configuration it returned.
    ///
    /// Shutdown, when the task is cancelled, is ordered so that writes already taken finish:
    /// new writes are refused while taken ones get up to two seconds to commit (the server, the
    /// links and the durability feedback keep running meanwhile); then the listener and every
    /// connection close, the heartbeat stops, and the store is closed.
    public func run(onReady: @escaping @Sendable (ChainConfiguration) -> Void = { _ in }) async {
        logger.info("listening", metadata: [LogKey.address: "\(address)"])
        // Not child tasks: cancelling `run` must not cancel them before the drain below.
        let serving = Task { await self.server.run { (connection, reader) async throws(CatenaError) in
            try await self.serve(connection, &reader)
        } }
        let pump = Task { await self.pumpDurability() }
        let heartbeat = Task { await self.heartbeat(onReady: onReady) }
        while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
        logger.info("shutting down: draining writes")
        await replica.drain(timeout: .seconds(2))
        heartbeat.cancel()
        server.close()
        serving.cancel()
        await serving.value
        await heartbeat.value
        await replica.finishDurabilityFeedback()
        await pump.value
        await store.close()
        logger.info("stopped")
    }

    /// The node's local store, for inspection (replica comparison in tests and tools). Writing
    /// to it directly would bypass the chain.
    public var localStore: Store { store }

    /// The node's role in the configuration it has now (nil before the first configuration).
    public var role: ChainRole? { replica.view.snapshot.role }

    /// The configuration the node has now.
    public var chainConfiguration: ChainConfiguration? { replica.view.snapshot.configuration }

    /// Current replication metrics.
    public var metrics: ReplicaMetrics {
        get async { await replica.currentMetrics }
    }

    // MARK: - Durability

    /// Feeds durability back to the replica in log order, one ticket after another.
    private func pumpDurability() async {
        for await (ticket, lsn) in tickets {
            do {
                try await ticket.durable()
            } catch {
                await replica.failStop(error)
                continue
            }
            await replica.durable(through: lsn)
        }
    }

    // MARK: - Master

    /// Heartbeats the master every interval; each answer is the current configuration.
    private func heartbeat(onReady: @Sendable (ChainConfiguration) -> Void) async {
        var connection: RequestConnection?
        var masterIndex = 0
        var ready = false
        var complained = false
        let hello = Hello(role: .node, clusterID: configuration.clusterID, senderID: configuration.id.rawValue)
        while !Task.isCancelled {
            do throws(CatenaError) {
                if connection == nil || connection!.isClosed {
                    let master = configuration.masters[masterIndex % configuration.masters.count]
                    connection = try await RequestConnection.connect(to: master, hello: hello, limits: configuration.connectionLimits)
                }
                let beat = Heartbeat(node: configuration.id, address: address.description, highestLSN: store.highestLSN)
                let reply = try await connection!.request(Frame(type: .heartbeat, payload: beat.encoded()),
                                                          timeout: max(.seconds(2), configuration.heartbeatInterval * 5))
                guard reply.type == .configuration else {
                    throw CatenaError(.protocolViolation, "the master answered a heartbeat with \(reply.type)")
                }
                let chain = try ConfigurationPayload.decode(reply.payload)
                await replica.configure(chain)
                complained = false
                if !ready {
                    ready = true
                    onReady(chain)
                }
            } catch {
                connection?.close()
                connection = nil
                masterIndex += 1
                if Task.isCancelled { break }
                if !complained || error.code != .unavailable {
                    logger.warning("heartbeat failed", metadata: ["error": "\(error)"])
                    complained = true
                }
            }
            try? await Task.sleep(for: configuration.heartbeatInterval)
        }
        connection?.close()
    }
}
