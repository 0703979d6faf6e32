import ArgumentParser
import CatenaClient
import CatenaCore
import CatenaWire
import Foundation

#if canImport(Glibc)
import Glibc
#endif

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

    func admin(clusterID: String? = nil) throws(CatenaError) -> ChainAdmin {
        let text = master ?? ProcessInfo.processInfo.environment["CATENA_MASTER"] ?? "127.0.0.1:7000"
        let masters = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return try ChainAdmin(masters: masters, clusterID: clusterID, timeout: .milliseconds(Int(timeout * 1000)))
    }
}

/// `catena chain status [--json]`.
struct ChainStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Members in chain order (then nodes joining): role, highest LSN, lag, lease and health."
    )

    @Flag(name: .long, help: "Print JSON instead of a table.") var json = false
    @Flag(name: .long, help: "Refresh until Ctrl-C: on a terminal the table is redrawn in place; otherwise each refresh is printed (JSON: one object per line).")
    var watch = false
    @Option(name: .long, help: "Seconds between refreshes with --watch.") var interval: Double = 1
    @OptionGroup var options: AdminOptions

    func validate() throws {
        guard interval >= 0.05 else { throw ValidationError("--interval must be at least 0.05 seconds") }
    }

    func run() async throws {
        let admin = try options.admin()
        guard watch else {
            let status = try await admin.status()
            print(json ? try StatusJSON(status).text() : StatusTable.render(status), terminator: "")
            return
        }
        // Until Ctrl-C (SIGINT ends the process): a failover shows as it happens, an
        // unreachable master as a line that says so, and the watch goes on.
        let terminal = !json && isatty(STDOUT_FILENO) == 1
        var previous: ChainStatus?
        // The last epoch changes, kept under the table (a terminal redraws it each time).
        var changes: [String] = []
        while true {
            let stamp = ISO8601DateFormatter.string(from: Date(), timeZone: .current, formatOptions: [.withFullTime, .withColonSeparatorInTime])
            var text: String
            do throws(CatenaError) {
                let status = try await admin.status()
                if json {
                    text = (try? StatusJSON(status).text(compact: true)) ?? "{}\n"
                } else {
                    text = "\(stamp)  " + StatusTable.render(status)
                    if let previous, previous.epoch != status.epoch {
                        changes.append("\(stamp)  epoch \(previous.epoch) -> \(status.epoch): " + StatusTable.change(from: previous, to: status))
                        changes = changes.suffix(5)
                        if !terminal { text += changes.last! + "\n" }
                    }
                    if terminal && !changes.isEmpty { text += "\n" + changes.joined(separator: "\n") + "\n" }
                }
                previous = status
            } catch {
                text = json ? WatchError(error: "\(error.code)", message: error.message).line() : "\(stamp)  no status: \(error.message) [\(error.code)]\n"
            }
            // On a terminal: clear the screen and draw the table and the last epoch changes.
            print(terminal ? "\u{1B}[H\u{1B}[2J" + text : text + (json ? "" : "\n"), terminator: "")
            fflush(nil)
            try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
        }
    }
}

/// `catena chain add-node ID --address HOST:PORT [--wait]`.
struct AddNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add-node",
        abstract: "Add a node: it catches up from the tail and is appended as the new tail once caught up.",
        discussion: """
            Start the node (catena node --id ID ...) before or after; it waits until the master \
            knows it. With --wait, waits until the node is a member holding a lease (it has \
            everything committed before it joined and serves), showing on a terminal what it \
            copied, its rate and the time left (asked of the node itself); exit status 3 if it \
            is not one after --wait-timeout.
            """
    )

    @Argument(help: "The node's id.") var id: String
    @Option(name: .long, help: "HOST:PORT the node serves at.") var address: String
    @Flag(help: "Wait until the node is a member of the chain with a lease (serving).") var wait = false
    @Option(help: "With --wait, give up after this many seconds.") var waitTimeout: Double = 3600
    @Flag(help: "Print the chain's status as JSON.") var json = false
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let admin = try options.admin()
        var status = try await admin.addNode(try NodeID(id), address: address)
        if wait { status = try await waitUntilMember(try NodeID(id), address: address, admin: admin, timeout: .milliseconds(Int(waitTimeout * 1000))) }
        if json { return print(try StatusJSON(status).text(), terminator: "") }
        print(wait ? "added \(id) at \(address): a member at epoch \(status.epoch)\n" : "added \(id) at \(address); it joins as tail once caught up\n")
        print(StatusTable.render(status), terminator: "")
    }
}

/// `catena chain remove-node ID [--wait]`.
struct RemoveNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove-node",
        abstract: "Remove a node gracefully: the chain is reconfigured without it once it stopped serving, then the node stops.",
        discussion: """
            The master stops renewing the node's lease; the node stops serving at its next \
            heartbeat and says so, and the master reconfigures the chain without it (at the \
            latest when its lease runs out). With --wait, waits until the master no longer lists \
            it (catena node drain ID does the same).
            """
    )

    @Argument(help: "The node's id.") var id: String
    @Flag(help: "Wait until the chain runs without the node.") var wait = false
    @Option(help: "With --wait, give up after this many seconds.") var waitTimeout: Double = 60
    @Flag(help: "Print the chain's status as JSON.") var json = false
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let admin = try options.admin()
        var status = try await admin.removeNode(try NodeID(id))
        if wait { status = try await waitUntilGone(try NodeID(id), admin: admin, from: status, timeout: .milliseconds(Int(waitTimeout * 1000))) }
        if json { return print(try StatusJSON(status).text(), terminator: "") }
        print(wait ? "removed \(id): the chain runs without it at epoch \(status.epoch)\n"
                   : "removing \(id): the chain drops it once it stopped serving; then it stops\n")
        print(StatusTable.render(status), terminator: "")
    }
}

/// `chain status --watch --json`'s line when the master does not answer.
struct WatchError: Encodable {
    var error: String
    var message: String

    func line() -> String {
        (try? jsonText(self, compact: true)) ?? "{}\n"
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

    /// What changed between two statuses' memberships, in a few words (`n3 left; n1 head -> tail`).
    static func change(from old: ChainStatus, to new: ChainStatus) -> String {
        var words: [String] = []
        let oldRoles = Dictionary(old.nodes.compactMap { n in n.role.map { (n.id, "\($0)") } }, uniquingKeysWith: { a, _ in a })
        let newRoles = Dictionary(new.nodes.compactMap { n in n.role.map { (n.id, "\($0)") } }, uniquingKeysWith: { a, _ in a })
        for (id, role) in oldRoles.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            if let now = newRoles[id] {
                if now != role { words.append("\(id) \(role) -> \(now)") }
            } else {
                words.append("\(id) left")
            }
        }
        for (id, role) in newRoles.sorted(by: { $0.key.rawValue < $1.key.rawValue }) where oldRoles[id] == nil {
            words.append("\(id) joined as \(role)")
        }
        return words.isEmpty ? "same members" : words.joined(separator: "; ")
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

    func text(compact: Bool = false) throws -> String {
        try jsonText(self, compact: compact)
    }
}
