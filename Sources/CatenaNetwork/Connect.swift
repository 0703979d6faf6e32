import CatenaCore
import CatenaWire
import NIOCore
import NIOPosix

extension SocketAddress {
    /// The address as `host:port` for announcing it to peers.
    public var catenaAddress: Address? {
        guard let ip = ipAddress, let port, let p = UInt16(exactly: port) else { return nil }
        return Address(host: ip, port: p)
    }
}

/// Opens client-side connections: TCP connect, hello, and a checked welcome.
public enum FrameConnector {
    /// The event loops connections use unless told otherwise: NIO's shared group.
    public static var defaultGroup: any EventLoopGroup { MultiThreadedEventLoopGroup.singleton }

    /// Connects to `address`, introduces itself with `hello`, checks the welcome — the peer must
    /// be in the same cluster and answer with a version both sides speak — and runs `body` with
    /// the established connection; closes it when `body` returns. Errors: `unavailable` (cannot
    /// connect, or the peer closed), `wrongCluster`, `protocolVersionUnsupported`, the error
    /// frame the peer sent, or what `body` throws. `body` may write through the outbound writer
    /// (waits while the socket is full) or the ``FrameOutlet`` (never waits; coalesces).
    public static func withConnection<R: Sendable>(
        to address: Address, hello: Hello, limits: ConnectionLimits = ConnectionLimits(),
        group: any EventLoopGroup = FrameConnector.defaultGroup,
        _ body: (Welcome, inout FrameReader, NIOAsyncChannelOutboundWriter<Frame>, FrameOutlet) async throws(CatenaError) -> R
    ) async throws(CatenaError) -> R {
        let channel: NIOAsyncChannel<Frame, Frame>
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.nanoseconds(limits.handshakeTimeout.nanosecondsClamped))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: address.host, port: Int(address.port)) { child in limits.frameChannel(child) }
        } catch {
            throw CatenaError(.unavailable, "cannot connect to \(address): \(error)")
        }
        let result: Result<R, CatenaError>
        do {
            result = try await channel.executeThenClose { inbound, outbound in
                await Result.catching { () async throws(CatenaError) -> R in
                    let raw = channel.channel
                    let timer = raw.eventLoop.scheduleTask(in: .nanoseconds(limits.handshakeTimeout.nanosecondsClamped)) {
                        raw.close(promise: nil)
                    }
                    var reader = FrameReader(iterator: inbound.makeAsyncIterator())
                    let reply: Frame?
                    do {
                        try await outbound.write(Frame(type: .hello, payload: hello.encoded()))
                        reply = try await reader.next()
                        timer.cancel()
                    } catch {
                        timer.cancel()
                        throw handshakeFailure(error, address: address)
                    }
                    guard let reply else {
                        throw CatenaError(.unavailable, "\(address) closed the connection during the handshake")
                    }
                    let welcome = try check(reply, hello: hello, address: address)
                    return try await body(welcome, &reader, outbound, FrameOutlet(raw))
                }
            }
        } catch {
            throw CatenaError(.unavailable, "connection to \(address) failed: \(error)")
        }
        return try result.get()
    }

    /// What a handshake with `address` that failed with `error` throws: the peer's (or the
    /// decoder's) own error, `unavailable` naming the address for a lost connection.
    static func handshakeFailure(_ error: any Error, address: Address) -> CatenaError {
        guard let error = error as? CatenaError else {
            return CatenaError(.unavailable, "connection to \(address) failed during the handshake: \(error)")
        }
        return error.code == .unavailable ? CatenaError(.unavailable, "\(address): \(error.message)") : error
    }

    /// The welcome in `reply`, checked against what `hello` offered.
    static func check(_ reply: Frame, hello: Hello, address: Address) throws(CatenaError) -> Welcome {
        if reply.type == .error { throw try ErrorPayload.decode(reply.payload) }
        guard reply.type == .welcome else {
            throw CatenaError(.protocolViolation, "\(address) answered the hello with \(reply.type)")
        }
        let welcome = try Welcome(decoding: reply.payload)
        guard hello.clusterID.isEmpty || welcome.clusterID.utf8.elementsEqual(hello.clusterID.utf8) else {
            throw CatenaError(.wrongCluster, "\(address) is in cluster '\(welcome.clusterID)', not '\(hello.clusterID)'")
        }
        guard hello.versions.contains(welcome.version) else {
            throw CatenaError(.protocolVersionUnsupported, "\(address) chose protocol version \(welcome.version), outside \(hello.versions)")
        }
        return welcome
    }
}
