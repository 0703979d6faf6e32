import CatenaCore
import CatenaWire
import Logging
import NIOCore
import NIOPosix

/// Limits of a Catena TCP connection.
public struct ConnectionLimits: Hashable, Sendable {
    /// The largest frame accepted once the handshake is done.
    public var maxFrameSize: Int = 17 << 20
    /// The largest first frame (the hello): small, so an unknown peer cannot make us buffer much.
    public var handshakeFrameLimit: Int = 64 << 10
    /// How long a new connection may take to say hello.
    public var handshakeTimeout: Duration = .seconds(5)

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
    @available(*, deprecated, message: "uses NIOAsyncChannel's deinit-based teardown on purpose (swift-nio #2813)")
    func acceptedFrameChannel(_ channel: any Channel) -> EventLoopFuture<NIOAsyncChannel<Frame, Frame>> {
        channel.eventLoop.makeCompletedFuture {
            try addFrameHandlers(channel)
            return try NIOAsyncChannel<Frame, Frame>(synchronouslyWrapping: channel)
        }
    }

    private func addFrameHandlers(_ channel: any Channel) throws {
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize, firstFrameLimit: handshakeFrameLimit)))
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
    }
}

/// Calls the deprecated ``ConnectionLimits/acceptedFrameChannel(_:)`` from a deprecated context,
/// which keeps the one deliberate use of a deprecated NIO API from warning at every call site.
private protocol AcceptedFrameChannel {
    func acceptedFrameChannelWithoutWarning(_ channel: any Channel) -> EventLoopFuture<NIOAsyncChannel<Frame, Frame>>
}

extension ConnectionLimits: AcceptedFrameChannel {
    @available(*, deprecated, message: "see acceptedFrameChannel(_:)")
    func acceptedFrameChannelWithoutWarning(_ channel: any Channel) -> EventLoopFuture<NIOAsyncChannel<Frame, Frame>> {
        acceptedFrameChannel(channel)
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
}

/// Reads a connection's frames, turning decoder failures into ``CatenaError``s.
public struct FrameReader {
    var iterator: NIOAsyncChannelInboundStream<Frame>.AsyncIterator

    /// The next frame, nil at the end of the stream. Garbage, an oversized or a corrupt frame
    /// throws the decoder's ``CatenaError``; a reset connection throws `unavailable`.
    public mutating func next() async throws(CatenaError) -> Frame? {
        do {
            return try await iterator.next()
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.unavailable, "connection failed: \(error)")
        }
    }
}

/// A TCP server speaking Catena frames: it binds, performs the handshake of every connection
/// (cluster id, protocol version, role) and hands established connections to a handler, each in
/// its own child task. One connection's failure — garbage, a bad checksum, a handler error —
/// closes that connection only, after an error frame where one can still be sent.
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

    private init(channel: NIOAsyncChannel<NIOAsyncChannel<Frame, Frame>, Never>, clusterID: String, localID: String,
                 acceptedRoles: Set<PeerRole>, limits: ConnectionLimits, allowsClusterDiscovery: Bool, logger: Logger) throws(CatenaError) {
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
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: host, port: port) { child in (limits as any AcceptedFrameChannel).acceptedFrameChannelWithoutWarning(child) }
        } catch {
            throw CatenaError(.ioFailure, "cannot listen on \(host):\(port): \(error)")
        }
        return try FrameServer(channel: channel, clusterID: clusterID, localID: localID, acceptedRoles: acceptedRoles,
                               limits: limits, allowsClusterDiscovery: allowsClusterDiscovery, logger: logger)
    }

    /// The bound port.
    public var port: Int { localAddress.port ?? 0 }

    /// Accepts connections until the task is cancelled or ``close()`` is called; runs `handler`
    /// for every established connection. When `handler` throws a ``CatenaError`` the peer gets
    /// it as an error frame before the connection closes.
    public func run(handler: @escaping @Sendable (ServerConnection, inout FrameReader) async throws(CatenaError) -> Void) async {
        await withDiscardingTaskGroup { group in
            do {
                try await channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection, handler: handler) }
                    }
                }
            } catch {
                logger.debug("listener stopped", metadata: ["error": "\(error)"])
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
        log[metadataKey: LogKey.peer] = "\(remote)"
        do {
            try await connection.executeThenClose { inbound, outbound in
                var reader = FrameReader(iterator: inbound.makeAsyncIterator())
                var handshake = HandshakeStateMachine(clusterID: clusterID, localID: localID, acceptedRoles: acceptedRoles,
                                                      allowsClusterDiscovery: allowsClusterDiscovery)
                // A peer that does not say hello in time is cut off.
                let channel = connection.channel
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
                    log.debug("handshake failed", metadata: ["error": "\(error)"])
                    return
                }
                guard let first else { return }
                switch handshake.received(first) {
                case .reject(let reply, let error):
                    log.debug("connection refused", metadata: ["error": "\(error)"])
                    try? await outbound.write(reply)
                    return
                case .deliver:
                    return
                case .accept(let reply, let version, let peer):
                    try await outbound.write(reply)
                    log[metadataKey: LogKey.peer] = "\(peer.role) \(peer.senderID) \(remote)"
                    let established = ServerConnection(peer: peer, version: version, remoteAddress: remote, outbound: outbound)
                    do throws(CatenaError) {
                        try await handler(established, &reader)
                    } catch {
                        log.debug("connection closed with an error", metadata: ["error": "\(error)"])
                        if error.code != .unavailable {
                            try? await outbound.write(Frame.error(error))
                        }
                    }
                }
            }
        } catch {
            log.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }
}
