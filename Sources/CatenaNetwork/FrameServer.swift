import CatenaCore
import CatenaWire
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Limits of a Catena TCP connection, and of the server that accepts it. A node takes them from
/// ``NodeConfiguration/connectionLimits``; the master uses the defaults.
public struct ConnectionLimits: Hashable, Sendable {
    /// The largest frame accepted once the handshake is done. Every node of a chain should use
    /// the same limit: the head refuses writes whose records the chain's frames could not carry
    /// (`WriteLimits`), judged by its own limit.
    public var maxFrameSize: Int = 17 << 20
    /// The largest first frame (the hello): small, so an unknown peer cannot make us buffer much.
    public var handshakeFrameLimit: Int = 64 << 10
    /// How long a new connection may take to say hello.
    public var handshakeTimeout: Duration = .seconds(5)

    // Server side: what one listener (one process) holds for its peers.

    /// Client connections (role client) a server holds at once. A client beyond it is answered
    /// `busy` after its hello and closed; established connections are unaffected. Connections of
    /// any role, those still saying hello included, beyond this and ``reservedPeerConnections``
    /// together are answered `busy` at once. Default 1,024; keep the sum below the process's
    /// file-descriptor limit (`ulimit -n`) less what the store needs.
    public var maxConnections: Int = 1024
    /// Further connections for peers (role node or master) only, so that replication and
    /// heartbeats get through while clients fill ``maxConnections``. Default 64.
    public var reservedPeerConnections: Int = 64
    /// How long an established client connection may pass no frame, in either direction, before
    /// the server closes it (after an error frame `timeout`); nil: never. Default 5 minutes.
    /// Peers (nodes, the master) are exempt: a replication link carries nothing while no writes
    /// come, and a node's heartbeats are far more frequent. A client that sleeps longer simply
    /// reconnects (the client library does so by itself).
    public var idleTimeout: Duration? = .seconds(300)
    /// Bytes of request frames one client connection may have in progress (read and not yet
    /// answered); beyond it the server stops reading the connection until requests finish (TCP
    /// backpressure). A larger frame is read alone. Default 64 MiB.
    public var maxRequestBytesPerConnection: Int = 64 << 20
    /// Bytes of request frames all client connections of a server may have in progress, beyond
    /// each connection's ``requestBytesAllowance``; connections wait in turn for room. Default
    /// 256 MiB.
    public var maxRequestBytesInProgress: Int = 256 << 20
    /// Bytes in progress each client connection holds outside ``maxRequestBytesInProgress``, so
    /// that pings, reads and small writes of one client are never held up by others' large
    /// writes. Default 64 KiB.
    public var requestBytesAllowance: Int = 64 << 10

    /// The defaults above.
    public init() {}

    /// Sets up `channel` (either end) to speak frames within these limits, as an `NIOAsyncChannel`.
    func frameChannel(_ channel: any Channel) -> EventLoopFuture<NIOAsyncChannel<Frame, Frame>> {
        channel.eventLoop.makeCompletedFuture {
            try addFrameHandlers(channel)
            return try NIOAsyncChannel<Frame, Frame>(wrappingChannelSynchronously: channel)
        }
    }

    /// Like ``frameChannel(_:)``, for a connection a server accepted: one that is never handed to
    /// its handler — accepted while the listener shuts down, still buffered in the listener's
    /// inbound stream when that ends — is closed when it is released. The non-deprecated
    /// initializer traps instead ("Deinited NIOAsyncWriter without calling finish()",
    /// swift-nio #2813 and #2637): a node would crash when a client connects as it stops.
    ///
    /// An ``InboundGate`` in front of the decoder admits each frame's bytes through `admission`.
    @available(*, deprecated, message: "uses NIOAsyncChannel's deinit-based teardown on purpose (swift-nio #2813)")
    func acceptedFrameChannel(_ channel: any Channel, admission: ConnectionAdmission) -> EventLoopFuture<NIOAsyncChannel<Frame, Frame>> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(InboundGate(admission: admission, maxFrameSize: maxFrameSize))
            try addFrameHandlers(channel)
            return try NIOAsyncChannel<Frame, Frame>(synchronouslyWrapping: channel)
        }
    }

    /// The admission bounds of a server with these limits.
    var admissionLimits: RequestAdmissionState.Limits {
        RequestAdmissionState.Limits(perConnection: maxRequestBytesPerConnection, perServer: maxRequestBytesInProgress,
                                     allowance: requestBytesAllowance)
    }

    func addFrameHandlers(_ channel: any Channel) throws {
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize, firstFrameLimit: handshakeFrameLimit)))
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
    }
}

/// Calls the deprecated ``ConnectionLimits/acceptedFrameChannel(_:admission:)`` from a deprecated context,
/// which keeps the one deliberate use of a deprecated NIO API from warning at every call site.
private protocol AcceptedFrameChannel {
    func acceptedFrameChannelWithoutWarning(_ channel: any Channel, admission: ConnectionAdmission) -> EventLoopFuture<NIOAsyncChannel<Frame, Frame>>
}

extension ConnectionLimits: AcceptedFrameChannel {
    @available(*, deprecated, message: "see acceptedFrameChannel(_:admission:)")
    func acceptedFrameChannelWithoutWarning(_ channel: any Channel, admission: ConnectionAdmission) -> EventLoopFuture<NIOAsyncChannel<Frame, Frame>> {
        acceptedFrameChannel(channel, admission: admission)
    }
}

/// The accepted side of a connection after its handshake: who the peer is, and its frames.
public struct ServerConnection: Sendable {
    /// The peer's hello.
    public let peer: Hello
    /// The negotiated protocol version.
    public let version: UInt16
    /// The peer's socket address, for logs.
    public let remoteAddress: String
    /// Frames to the peer. Safe to use from several tasks at once; writes wait while the
    /// socket is not writable (backpressure).
    public let outbound: NIOAsyncChannelOutboundWriter<Frame>
    /// Frames to the peer without waiting, coalesced (see ``FrameOutlet``): for replies and
    /// acknowledgements whose number the handler bounds.
    public let outlet: FrameOutlet
    let admission: ConnectionAdmission?

    /// The handler is done with `frame`, read with ``FrameReader/nextHeld()``: its bytes no longer
    /// count against the connection's and the server's request budget. Call it once per frame.
    public func release(_ frame: Frame) {
        admission?.release(bytes: frame.encodedSize, delivered: true)
    }
}

/// Reads a connection's frames, turning decoder failures into ``CatenaError``s.
///
/// On a server's connection, frames count against its request budget from the moment their
/// bytes are admitted: ``next()`` ends that when it hands a frame out; ``nextHeld()`` leaves it
/// to the handler, which calls ``ServerConnection/release(_:)`` once the request is answered.
public struct FrameReader {
    var iterator: NIOAsyncChannelInboundStream<Frame>.AsyncIterator
    var admission: ConnectionAdmission?

    init(iterator: NIOAsyncChannelInboundStream<Frame>.AsyncIterator, admission: ConnectionAdmission? = nil) {
        self.iterator = iterator
        self.admission = admission
    }

    /// The next frame, nil at the end of the stream. Garbage, an oversized or a corrupt frame
    /// throws the decoder's ``CatenaError``; a reset connection throws `unavailable`.
    public mutating func next() async throws(CatenaError) -> Frame? {
        let frame = try await nextFrame()
        if let frame { admission?.release(bytes: frame.encodedSize, delivered: false) }
        return frame
    }

    /// Like ``next()``, but the frame keeps counting against the request budget (the handler
    /// works on it) until ``ServerConnection/release(_:)``.
    public mutating func nextHeld() async throws(CatenaError) -> Frame? {
        let frame = try await nextFrame()
        if let frame { admission?.deliver(bytes: frame.encodedSize) }
        return frame
    }

    private mutating func nextFrame() async throws(CatenaError) -> Frame? {
        do {
            return try await iterator.next()
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.unavailable, "connection failed: \(error)")
        }
    }
}

/// Counters and gauges of a ``FrameServer``: its connections and its request budget.
public struct FrameServerMetrics: Hashable, Sendable {
    /// Connections open now (handshaking, clients and peers).
    public var openConnections = 0
    /// Established client connections now.
    public var clientConnections = 0
    /// Connections refused with `busy` because the server held ``ConnectionLimits/maxConnections``.
    public var refusedConnections = 0
    /// Client connections closed by the idle timeout.
    public var idleClosedConnections = 0
    /// The request budget.
    public var admission = RequestAdmissionMetrics()
}

/// A TCP server speaking Catena frames: it binds, performs the handshake of every connection
/// (cluster id, protocol version, role) and hands established connections to a handler, each in
/// its own child task. One connection's failure — garbage, a bad checksum, a handler error —
/// closes that connection only, after an error frame where one can still be sent.
///
/// It keeps the server's resources bounded (``ConnectionLimits``): at most
/// ``ConnectionLimits/maxConnections`` client connections (and a reserve for peers; beyond,
/// `busy`), an idle timeout for clients, and a request budget in bytes per connection and for
/// the whole server, enforced before a frame's bytes are read (``RequestAdmissionState``).
public final class FrameServer: Sendable {
    /// The address the server is bound to (the real port when asked for port 0).
    public let localAddress: SocketAddress
    private let channel: NIOAsyncChannel<NIOAsyncChannel<Frame, Frame>, Never>
    private let clusterID: String
    private let localID: String
    private let acceptedRoles: Set<PeerRole>
    private let limits: ConnectionLimits
    private let allowsClusterDiscovery: Bool
    private let logger: Logger
    private let budget: RequestBudget
    private let counts = Mutex(Counts())

    private struct Counts {
        var open = 0
        var clients = 0
        var refused = 0
        var idleClosed = 0
    }

    private init(channel: NIOAsyncChannel<NIOAsyncChannel<Frame, Frame>, Never>, clusterID: String, localID: String,
                 acceptedRoles: Set<PeerRole>, limits: ConnectionLimits, allowsClusterDiscovery: Bool, budget: RequestBudget,
                 logger: Logger) throws(CatenaError) {
        guard let address = channel.channel.localAddress else {
            throw CatenaError(.ioFailure, "the listening socket has no local address")
        }
        self.localAddress = address
        self.channel = channel
        self.clusterID = clusterID
        self.localID = localID
        self.acceptedRoles = acceptedRoles
        self.limits = limits
        self.allowsClusterDiscovery = allowsClusterDiscovery
        self.budget = budget
        self.logger = logger
    }

    /// Binds `host:port` (port 0 picks a free port). Fails with `ioFailure` naming the address.
    /// `allowsClusterDiscovery`: clients may connect without knowing the cluster id (the master).
    public static func bind(
        host: String, port: Int, clusterID: String, localID: String, acceptedRoles: Set<PeerRole>,
        allowsClusterDiscovery: Bool = false,
        limits: ConnectionLimits = ConnectionLimits(), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger
    ) async throws(CatenaError) -> FrameServer {
        let channel: NIOAsyncChannel<NIOAsyncChannel<Frame, Frame>, Never>
        let budget = RequestBudget(limits: limits.admissionLimits)
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: host, port: port) { child in
                    (limits as any AcceptedFrameChannel).acceptedFrameChannelWithoutWarning(child, admission: budget.connection())
                }
        } catch {
            throw CatenaError(.ioFailure, "cannot listen on \(host):\(port): \(error)")
        }
        return try FrameServer(channel: channel, clusterID: clusterID, localID: localID, acceptedRoles: acceptedRoles,
                               limits: limits, allowsClusterDiscovery: allowsClusterDiscovery, budget: budget, logger: logger)
    }

    /// The server's connection counts and request budget now.
    public var metrics: FrameServerMetrics {
        let c = counts.withLock { $0 }
        return FrameServerMetrics(openConnections: c.open, clientConnections: c.clients, refusedConnections: c.refused,
                                  idleClosedConnections: c.idleClosed, admission: budget.metrics)
    }

    /// The bound port.
    public var port: Int { localAddress.port ?? 0 }

    /// Accepts connections until the task is cancelled or ``close()`` is called; runs `handler`
    /// for every established connection. When `handler` throws a ``CatenaError`` the peer gets
    /// it as an error frame before the connection closes.
    ///
    /// `onEventLoops`: each connection's handler runs on the connection's event loop
    /// (``EventLoopTaskExecutor``), so a frame reaches it without a thread hand-over; the
    /// handler must then never block (child tasks inherit the preference).
    public func run(onEventLoops: Bool = false,
                    handler: @escaping @Sendable (ServerConnection, inout FrameReader) async throws(CatenaError) -> Void) async {
        await withDiscardingTaskGroup { group in
            do {
                try await channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        let loop: EventLoopTaskExecutor? = onEventLoops ? EventLoopTaskExecutor(connection.channel.eventLoop) : nil
                        group.addTask(executorPreference: loop) { await self.serve(connection, handler: handler) }
                    }
                }
            } catch {
                logger.debug("listener stopped", metadata: .catena([.error: "\(error)"]))
            }
            group.cancelAll()
        }
    }

    /// Stops accepting connections; ``run(handler:)`` returns once open connections ended.
    public func close() {
        channel.channel.close(promise: nil)
    }

    private func serve(_ connection: NIOAsyncChannel<Frame, Frame>,
                       handler: @Sendable (ServerConnection, inout FrameReader) async throws(CatenaError) -> Void) async {
        let remote = connection.channel.remoteAddress.map { "\($0)" } ?? "?"
        var log = logger
        log[metadataKey: LogKey.peer.rawValue] = "\(remote)"
        // Past every slot, clients' and peers' alike: refused before the hello.
        let opened = counts.withLock { c in
            guard c.open < limits.maxConnections + limits.reservedPeerConnections else {
                c.refused += 1
                return false
            }
            c.open += 1
            return true
        }
        guard opened else {
            log.debug("connection refused: too many connections")
            try? await connection.executeThenClose { _, outbound in
                try? await outbound.write(Frame.error(CatenaError(.busy, "\(localID) holds \(limits.maxConnections + limits.reservedPeerConnections) connections, its limit; retry later")))
            }
            return
        }
        defer { counts.withLock { $0.open -= 1 } }
        let channel = connection.channel
        let admission = try? await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: InboundGate.self).admission
        }.get()
        do {
            try await connection.executeThenClose { inbound, outbound in
                var reader = FrameReader(iterator: inbound.makeAsyncIterator(), admission: admission)
                var handshake = HandshakeStateMachine(clusterID: clusterID, localID: localID, acceptedRoles: acceptedRoles,
                                                      allowsClusterDiscovery: allowsClusterDiscovery)
                // A peer that does not say hello in time is cut off.
                let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(limits.handshakeTimeout.nanosecondsClamped)) {
                    channel.close(promise: nil)
                }
                let first: Frame?
                do throws(CatenaError) {
                    first = try await reader.next()
                    timer.cancel()
                } catch {
                    timer.cancel()
                    if error.code != .unavailable {
                        if case .reject(let reply, _) = handshake.decodingFailed(error) { try? await outbound.write(reply) }
                    }
                    log.debug("handshake failed", metadata: .catena([.error: "\(error)"]))
                    return
                }
                guard let first else { return }
                switch handshake.received(first) {
                case .reject(let reply, let error):
                    log.debug("connection refused", metadata: .catena([.error: "\(error)"]))
                    try? await outbound.write(reply)
                    return
                case .deliver:
                    return
                case .accept(let reply, let version, let peer):
                    let isPeer = peer.role == .node || peer.role == .master
                    if !isPeer {
                        let admitted = counts.withLock { c in
                            guard c.clients < limits.maxConnections else {
                                c.refused += 1
                                return false
                            }
                            c.clients += 1
                            return true
                        }
                        guard admitted else {
                            log.debug("connection refused: too many client connections")
                            try? await outbound.write(Frame.error(CatenaError(.busy, "\(localID) holds \(limits.maxConnections) client connections, its limit; retry later")))
                            return
                        }
                    }
                    defer { if !isPeer { counts.withLock { $0.clients -= 1 } } }
                    try await outbound.write(reply)
                    admission?.setMode(isPeer ? .unmetered : .metered)
                    if !isPeer, let idle = limits.idleTimeout {
                        try? await channel.eventLoop.submit {
                            let encoder = try channel.pipeline.syncOperations.handler(type: MessageToByteHandler<FrameEncoder>.self)
                            let handler = IdleConnectionHandler(timeout: idle) { [weak self] in
                                self?.counts.withLock { $0.idleClosed += 1 }
                            }
                            try channel.pipeline.syncOperations.addHandler(handler, position: .after(encoder))
                        }.get()
                    }
                    log[metadataKey: LogKey.peer.rawValue] = "\(peer.role) \(peer.senderID) \(remote)"
                    let established = ServerConnection(peer: peer, version: version, remoteAddress: remote, outbound: outbound,
                                                       outlet: FrameOutlet(channel), admission: admission)
                    do throws(CatenaError) {
                        try await handler(established, &reader)
                    } catch {
                        log.debug("connection closed with an error", metadata: .catena([.error: "\(error)"]))
                        if error.code != .unavailable {
                            try? await outbound.write(Frame.error(error))
                        }
                    }
                }
            }
        } catch {
            log.debug("connection ended", metadata: .catena([.error: "\(error)"]))
        }
        // The handler read its last frame and answered every request: what is still counted
        // are frames it never got.
        admission?.close()
    }
}
