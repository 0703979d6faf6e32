import ArgumentParser
import CatenaClient
import CatenaCore
import Foundation

/// `catena node status ADDRESS`: one node's own view of itself, like `etcdctl endpoint status`.
struct NodeStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "One node's own view: role, epoch, lease, LSNs, disk use (any node, member or not).",
        discussion: """
            Asks the node at ADDRESS (its client port, HOST:PORT) directly, so it shows what that \
            node believes — which may differ from the master's view (catena chain status) while \
            a node is cut off or catching up. The cluster id comes from the master, or from \
            --cluster when the master is down. Exit status 3 if the node does not answer.
            """
    )

    @Argument(help: ArgumentHelp("The node's address.", valueName: "host:port")) var address: String
    @Option(help: "The cluster id (default: the master names it).") var cluster: String?
    @Flag(help: "Print JSON instead of text.") var json = false
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let admin = try options.admin(clusterID: cluster)
        let s = try await admin.nodeStatus(at: address)
        if json {
            print(try NodeStatusJSON(s).text(), terminator: "")
            return
        }
        func bytes(_ n: UInt64) -> String { n >= 10 << 20 ? String(format: "%.1f MiB", Double(n) / 1_048_576) : "\(n) B" }
        var lines = [
            "node \(s.node) at \(address)  catena \(s.version)  up \(duration(s.uptimeMilliseconds))",
            "chain \(s.chainID)  epoch \(s.epoch)  role \(s.role ?? "none")  standing \(s.standing ?? "not heard from the master")",
            "lease " + (s.leaseMilliseconds.map { "\($0) ms left" } ?? "none (serves no clients)")
                + (s.readsBlocked ? "  reads blocked until it holds what was committed before it joined" : "")
                + (s.draining ? "  shutting down" : ""),
            "log: durable \(s.durable)  accepted \(s.lastAccepted)  acknowledged \(s.acknowledged)  commit watermark \(s.commitWatermark)",
            "disk: \(s.segments) segment\(s.segments == 1 ? "" : "s"), \(bytes(s.diskBytes)); sealed \(bytes(s.sealedBytes)) of which garbage \(bytes(s.garbageBytes))",
        ]
        if let c = s.catchUp {
            lines.append("catch-up: \(c.records) records, \(bytes(c.bytes)) copied; lag \(c.lagRecords.map { "\($0) records" } ?? "unknown")")
        }
        if let failure = s.failure { lines.append("FAILED: \(failure)") }
        print(lines.joined(separator: "\n"))
    }

    private func duration(_ ms: UInt64) -> String {
        let s = ms / 1000
        return s >= 3600 ? "\(s / 3600)h\(s % 3600 / 60)m" : s >= 60 ? "\(s / 60)m\(s % 60)s" : "\(s)s"
    }
}

/// A node's status as JSON (`catena node status --json`).
struct NodeStatusJSON: Encodable {
    var node: String
    var version: String
    var chain: UInt32
    var epoch: UInt64
    var role: String?
    var standing: String?
    var leaseMs: UInt64?
    var readsBlocked: Bool
    var draining: Bool
    var durableLSN: String
    var lastAcceptedLSN: String
    var acknowledgedLSN: String
    var commitWatermark: String
    var failure: String?
    var segments: UInt32
    var diskBytes: UInt64
    var sealedBytes: UInt64
    var garbageBytes: UInt64
    var uptimeMs: UInt64
    var catchUpRecords: UInt64?
    var catchUpBytes: UInt64?
    var catchUpLagRecords: UInt64?

    init(_ s: NodeStatus) {
        node = s.node
        version = s.version
        chain = s.chainID
        epoch = s.epoch
        role = s.role
        standing = s.standing
        leaseMs = s.leaseMilliseconds
        readsBlocked = s.readsBlocked
        draining = s.draining
        durableLSN = "\(s.durable)"
        lastAcceptedLSN = "\(s.lastAccepted)"
        acknowledgedLSN = "\(s.acknowledged)"
        commitWatermark = "\(s.commitWatermark)"
        failure = s.failure
        segments = s.segments
        diskBytes = s.diskBytes
        sealedBytes = s.sealedBytes
        garbageBytes = s.garbageBytes
        uptimeMs = s.uptimeMilliseconds
        catchUpRecords = s.catchUp?.records
        catchUpBytes = s.catchUp?.bytes
        catchUpLagRecords = s.catchUp?.lagRecords
    }

    func text() throws -> String {
        try jsonText(self, snakeCase: true)
    }
}
