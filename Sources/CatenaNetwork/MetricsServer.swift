import CatenaCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP server answering `GET /metrics` with what `render` returns (Prometheus text),
/// `GET /healthz` with 200 whenever it answers at all (liveness: a probe that restarts a
/// process must not restart a node whose log failed — its heartbeats report the failure — nor
/// wait on anything that may be slow), and `GET /readyz` with what `health` says (200 or 503,
/// and a line of detail), as Kubernetes probes and load balancers ask; anything else gets 404. One response
/// per connection (`Connection: close`), which is how a scraper uses it.
public final class MetricsServer: Sendable {
    /// What `/healthz` and `/readyz` answer.
    public struct Health: Hashable, Sendable {
        /// The process works. `/healthz` answers 200 whenever the server answers at all; this
        /// says whether anything is wrong that a restart would not mend either (shown by `/readyz`).
        public var live: Bool
        /// It may serve clients now (`/readyz` 200).
        public var ready: Bool
        /// One line on why, for people.
        public var detail: String

        public init(live: Bool, ready: Bool, detail: String) {
            self.live = live
            self.ready = ready
            self.detail = detail
        }
    }

    /// The bound address (the real port when asked for port 0).
    public let localAddress: SocketAddress
    private let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    private let render: @Sendable () async -> String
    private let health: @Sendable () async -> Health
    private let logger: Logger

    private init(channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>,
                 address: SocketAddress, render: @escaping @Sendable () async -> String, health: @escaping @Sendable () async -> Health, logger: Logger) {
        self.channel = channel
        self.localAddress = address
        self.render = render
        self.health = health
        self.logger = logger
    }

    /// Binds `address` (port 0 picks a free port). Fails with `ioFailure` naming the address.
    public static func bind(_ address: Address, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
                            health: @escaping @Sendable () async -> Health = { Health(live: true, ready: true, detail: "serving") },
                            render: @escaping @Sendable () async -> String) async throws(CatenaError) -> MetricsServer {
        let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: address.host, port: Int(address.port)) { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.configureHTTPServerPipeline()
                        return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: child)
                    }
                }
        } catch {
            throw CatenaError(.ioFailure, "cannot serve metrics on \(address): \(error)")
        }
        guard let local = channel.channel.localAddress else { throw CatenaError(.ioFailure, "the metrics socket has no local address") }
        return MetricsServer(channel: channel, address: local, render: render, health: health, logger: logger)
    }

    /// The bound port.
    public var port: Int { localAddress.port ?? 0 }

    /// Serves until the task is cancelled or ``close()`` is called.
    public func run() async {
        await withDiscardingTaskGroup { group in
            do {
                try await channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection) }
                    }
                }
            } catch {
                logger.debug("metrics listener stopped", metadata: .catena([.error: "\(error)"]))
            }
            group.cancelAll()
        }
    }

    /// Stops accepting connections.
    public func close() {
        channel.channel.close(promise: nil)
    }

    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                for try await part in inbound {
                    switch part {
                    case .head(let h):
                        head = h
                    case .body:
                        continue
                    case .end:
                        guard let request = head else { return }
                        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
                        let status: HTTPResponseStatus, body: String, type: String
                        switch (request.method, path) {
                        case (.GET, "/metrics"):
                            (status, body, type) = (.ok, await render(), "text/plain; version=0.0.4; charset=utf-8")
                        case (.GET, "/healthz"):
                            (status, body, type) = (.ok, "ok\n", "text/plain; charset=utf-8")
                        case (.GET, "/readyz"):
                            let h = await health()
                            (status, body, type) = (h.ready ? .ok : .serviceUnavailable, (h.ready ? "ok: " : "not ready: ") + h.detail + "\n",
                                                    "text/plain; charset=utf-8")
                        default:
                            (status, body, type) = (.notFound, "not found; try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")
                        }
                        var headers = HTTPHeaders()
                        headers.add(name: "Content-Type", value: type)
                        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
                        headers.add(name: "Connection", value: "close")
                        try await outbound.write(.head(HTTPResponseHead(version: request.version, status: status, headers: headers)))
                        try await outbound.write(.body(.byteBuffer(ByteBuffer(string: body))))
                        try await outbound.write(.end(nil))
                        return
                    }
                }
            }
        } catch {
            logger.debug("metrics connection ended", metadata: .catena([.error: "\(error)"]))
        }
    }
}
