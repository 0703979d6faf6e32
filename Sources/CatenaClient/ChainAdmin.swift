import CatenaCore
import CatenaNetwork
import CatenaWire
import NIOCore

/// Chain maintenance through the master: status, the configuration, adding a node, removing one
/// gracefully. What `catena chain` runs (`chain verify` through ``ChainVerifier``).
///
/// Each call asks the masters in turn until one answers; errors the master gives (an unknown
/// node, removing the last member, a malformed address) are thrown as they are.
public struct ChainAdmin: Sendable {
    /// The masters, asked in turn.
    public let masters: [Address]
    /// The cluster id; nil learns it from the master.
    public let clusterID: String?
    /// How long one call may take.
    public let timeout: Duration

    /// An admin for the cluster whose masters are at `masters` (`HOST:PORT` each).
    public init(masters: [String], clusterID: String? = nil, timeout: Duration = .seconds(10)) throws(CatenaError) {
        guard !masters.isEmpty else { throw CatenaError(.invalidArgument, "at least one master address is needed") }
        var parsed: [Address] = []
        for m in masters { parsed.append(try Address(parsing: m)) }
        self.masters = parsed
        self.clusterID = clusterID
        self.timeout = timeout
    }

    /// The chain's status: epoch, and every member (chain order) and joining node with its role,
    /// highest LSN, lag, lease and health.
    public func status() async throws(CatenaError) -> ChainStatus {
        try await ask(Frame(type: .getStatus))
    }

    /// Adds `node`, which serves at `address`: it catches up from the tail and is appended as the
    /// new tail once caught up. Returns the status after the master recorded it.
    public func addNode(_ node: NodeID, address: String) async throws(CatenaError) -> ChainStatus {
        try await ask(Frame(type: .addNode, payload: NodeRequest(node: node, address: address).encoded()))
    }

    /// Removes `node` gracefully: the master stops renewing its lease, activates a configuration
    /// without it once the lease ran out, and the node, told it is no longer known, stops.
    public func removeNode(_ node: NodeID) async throws(CatenaError) -> ChainStatus {
        try await ask(Frame(type: .removeNode, payload: NodeRequest(node: node).encoded()))
    }

    /// The storage node at `address`'s own view of itself — role, epoch, lease, LSNs, disk use
    /// (any node answers, member or not: this works while the master is down, given
    /// ``clusterID``). Without ``clusterID``, the cluster id comes from the first master that
    /// answers.
    public func nodeStatus(at address: String) async throws(CatenaError) -> NodeStatus {
        let node = try Address(parsing: address)
        let deadline = ContinuousClock.now + timeout
        let cluster = if let clusterID { clusterID } else { try await discoverClusterID() }
        let connection = try await RequestConnection.connect(to: node, hello: Hello(role: .client, clusterID: cluster, senderID: "catena-admin"))
        defer { connection.close() }
        let reply = try await connection.request(Frame(type: .getNodeStatus), timeout: max(.milliseconds(1), deadline - .now))
        guard reply.type == .nodeStatus else {
            throw CatenaError(.protocolViolation, "\(address) answered getNodeStatus with \(reply.type)")
        }
        return try NodeStatus(decoding: reply.payload)
    }

    /// The cluster id, from the first master that answers.
    private func discoverClusterID() async throws(CatenaError) -> String {
        var lastError = CatenaError(.unavailable, "no master answered to name the cluster; give the cluster id")
        for master in masters {
            do {
                let connection = try await RequestConnection.connect(to: master, hello: Hello(role: .client, clusterID: "", senderID: "catena-admin"))
                defer { connection.close() }
                if let id = connection.welcome?.clusterID, !id.isEmpty { return id }
            } catch {
                lastError = CatenaError(error.code, "\(error.message) (the master names the cluster; give the cluster id to ask a node without it)")
            }
        }
        throw lastError
    }

    /// The chain's configuration as the master holds it: cluster id, epoch, members in chain
    /// order with their addresses.
    public func configuration() async throws(CatenaError) -> ChainConfiguration {
        try await ask(Frame(type: .getConfiguration), answeredWith: .configuration) { (payload) throws(CatenaError) in
            try ConfigurationPayload.decode(payload)
        }
    }

    private func ask(_ frame: Frame) async throws(CatenaError) -> ChainStatus {
        try await ask(frame, answeredWith: .chainStatus) { (payload) throws(CatenaError) in try ChainStatus(decoding: payload) }
    }

    private func ask<Reply>(_ frame: Frame, answeredWith replyType: FrameType,
                            _ decode: (ByteBuffer) throws(CatenaError) -> Reply) async throws(CatenaError) -> Reply {
        let deadline = ContinuousClock.now + timeout
        var lastError = CatenaError(.unavailable, "no master answered")
        for master in masters {
            guard ContinuousClock.now < deadline else { break }
            let hello = Hello(role: .client, clusterID: clusterID ?? "", senderID: "catena-admin")
            let connection: RequestConnection
            do {
                connection = try await RequestConnection.connect(to: master, hello: hello)
            } catch {
                if error.code == .wrongCluster || error.code == .protocolVersionUnsupported { throw error }
                lastError = error
                continue
            }
            defer { connection.close() }
            let reply = try await connection.request(frame, timeout: max(.milliseconds(1), deadline - .now))
            guard reply.type == replyType else {
                throw CatenaError(.protocolViolation, "the master answered \(frame.type) with \(reply.type)")
            }
            return try decode(reply.payload)
        }
        throw lastError
    }
}
