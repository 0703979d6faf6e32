import ArgumentParser
import CatenaClient
import CatenaCore
import CatenaWire
import Foundation

/// `catena chain`: see and change the chain's membership through the master.
struct ChainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chain",
        abstract: "Show the chain's status, add or remove nodes, verify that the members agree.",
        subcommands: [ChainStatusCommand.self, AddNode.self, RemoveNode.self, ChainVerifyCommand.self]
    )
}

/// Options the chain commands share.
struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Master address(es), HOST:PORT[,HOST:PORT]. Default: $CATENA_MASTER or 127.0.0.1:7000.", valueName: "addresses"))
    var master: String?

    @Option(name: .long, help: "Give up after this many seconds.")
    var timeout: Double = 10

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func admin() throws(CatenaError) -> ChainAdmin {
        let text = master ?? ProcessInfo.processInfo.environment["CATENA_MASTER"] ?? "127.0.0.1:7000"
        let masters = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return try ChainAdmin(masters: masters, timeout: .milliseconds(Int(timeout * 1000)))
    }
}

/// `catena chain status [--json]`.
struct ChainStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Members in chain order (then nodes joining): role, highest LSN, lag, lease and health."
    )

    @Flag(name: .long, help: "Print JSON instead of a table.") var json = false
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let status = try await options.admin().status()
        print(json ? try StatusJSON(status).text() : StatusTable.render(status), terminator: "")
    }
}

/// `catena chain add-node ID --address HOST:PORT`.
struct AddNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add-node",
        abstract: "Add a node: it catches up from the tail and is appended as the new tail once caught up.",
        discussion: "Start the node (catena node --id ID ...) before or after; it waits until the master knows it."
    )

    @Argument(help: "The node's id.") var id: String
    @Option(name: .long, help: "HOST:PORT the node serves at.") var address: String
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let status = try await options.admin().addNode(try NodeID(id), address: address)
        print("added \(id) at \(address); it joins as tail once caught up\n")
        print(StatusTable.render(status), terminator: "")
    }
}

/// `catena chain remove-node ID`.
struct RemoveNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove-node",
        abstract: "Remove a node gracefully: the chain is reconfigured without it once its lease ran out, then the node stops."
    )

    @Argument(help: "The node's id.") var id: String
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let status = try await options.admin().removeNode(try NodeID(id))
        print("removing \(id): the chain drops it once its lease has run out; then it stops\n")
        print(StatusTable.render(status), terminator: "")
    }
}

/// The status as a table.
enum StatusTable {
    static func render(_ s: ChainStatus) -> String {
        var out = "chain \(s.chainID)  epoch \(s.epoch)  \(s.available ? "available" : "UNAVAILABLE")"
        out += "  failure timeout \(s.failureTimeoutMilliseconds) ms  lease \(s.leaseMilliseconds) ms\n"
        if let reason = s.reason { out += "\(s.available ? "note" : "why"): \(reason)\n" }
        let header = ["NODE", "ROLE", "ADDRESS", "HIGHEST LSN", "LAG", "HEARTBEAT", "LEASE", "HEALTH"]
        let rows: [[String]] = s.nodes.map { (n: ChainStatus.Node) -> [String] in
            let role: String = n.role.map { "\($0)" } ?? "-"
            let age: String = n.heartbeatAgeMilliseconds.map { "\($0) ms ago" } ?? "never"
            let lease: String = n.leaseMilliseconds.map { "\($0) ms" } ?? "-"
            return [n.id.rawValue, role, n.address, "\(n.highestLSN)", "\(n.lagRecords)", age, lease, "\(n.health)"]
        }
        let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max()! }
        for row in [header] + rows {
            out += zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces) + "\n"
        }
        for n in s.nodes { if let reason = n.reason { out += "\(n.id): \(reason)\n" } }
        return out
    }
}

/// The status as JSON (`--json`), for scripts.
struct StatusJSON: Encodable {
    struct Node: Encodable {
        var id: String
        var address: String
        var role: String?
        var highestLSN: String
        var highestEpoch: UInt64
        var highestSeq: UInt64
        var lagRecords: UInt64
        var heartbeatAgeMs: UInt64?
        var leaseMs: UInt64?
        var health: String
        var reason: String?
    }
    var chain: UInt32
    var epoch: UInt64
    var available: Bool
    var reason: String?
    var failureTimeoutMs: UInt64
    var leaseMs: UInt64
    var nodes: [Node]

    init(_ s: ChainStatus) {
        chain = s.chainID
        epoch = s.epoch
        available = s.available
        reason = s.reason
        failureTimeoutMs = s.failureTimeoutMilliseconds
        leaseMs = s.leaseMilliseconds
        nodes = s.nodes.map {
            Node(id: $0.id.rawValue, address: $0.address, role: $0.role.map { "\($0)" }, highestLSN: "\($0.highestLSN)",
                 highestEpoch: $0.highestLSN.epoch, highestSeq: $0.highestLSN.seq, lagRecords: $0.lagRecords,
                 heartbeatAgeMs: $0.heartbeatAgeMilliseconds, leaseMs: $0.leaseMilliseconds, health: "\($0.health)",
                 reason: $0.reason)
        }
    }

    func text() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }
}
