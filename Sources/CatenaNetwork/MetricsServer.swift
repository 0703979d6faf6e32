import CatenaCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// Metrics in the Prometheus text exposition format (version 0.0.4), built line by line.
public struct MetricsText: Sendable {
    /// The text so far.
    public private(set) var text = ""

    /// An empty exposition.
    public init() {}

    /// Adds a metric family: its help, type (`counter` or `gauge`) and samples (labels → value).
    public mutating func add(_ name: String, _ type: String, _ help: String, _ samples: [([(String, String)], Double)]) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        for (labels, value) in samples {
            let rendered = labels.isEmpty ? "" : "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
            text += "\(name)\(rendered) \(format(value))\n"
        }
    }

    /// Adds a counter with one unlabelled sample.
    public mutating func counter(_ name: String, _ help: String, _ value: Int) {
        add(name, "counter", help, [([], Double(value))])
    }

    /// Adds a gauge with one unlabelled sample.
    public mutating func gauge(_ name: String, _ help: String, _ value: Double) {
        add(name, "gauge", help, [([], value)])
    }

    private func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    private func format(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : "\(v)"
    }
}

extension String {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

/// A small HTTP server answering `GET /metrics` with what `render` returns (Prometheus text);
/// anything else gets 404. One response per connection (`Connection: close`), which is how a
/// scraper uses it.
public final class MetricsServer: Sendable {
    /// The bound address (the real port when asked for port 0).
    public let localAddress: SocketAddress
    private let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    private let render: @Sendable () async -> String
    private let logger: Logger

    private init(channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>,
                 address: SocketAddress, render: @escaping @Sendable () async -> String, logger: Logger) {
        self.channel = channel
        self.localAddress = address
        self.render = render
        self.logger = logger
    }

    /// Binds `address` (port 0 picks a free port). Fails with `ioFailure` naming the address.
    public static func bind(_ address: Address, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
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
        return MetricsServer(channel: channel, address: local, render: render, logger: logger)
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
                logger.debug("metrics listener stopped", metadata: ["error": "\(error)"])
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
                        let found = request.method == .GET && (request.uri == "/metrics" || request.uri.hasPrefix("/metrics?"))
                        let body = found ? await render() : "not found; try /metrics\n"
                        var headers = HTTPHeaders()
                        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
                        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
                        headers.add(name: "Connection", value: "close")
                        try await outbound.write(.head(HTTPResponseHead(version: request.version, status: found ? .ok : .notFound, headers: headers)))
                        try await outbound.write(.body(.byteBuffer(ByteBuffer(string: body))))
                        try await outbound.write(.end(nil))
                        return
                    }
                }
            }
        } catch {
            logger.debug("metrics connection ended", metadata: ["error": "\(error)"])
        }
    }
}
