import ArgumentParser
import CatenaClient
import CatenaCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `catena node drain ID`: takes a member out of its chain without failing a client request.
struct NodeDrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Take a member out of its chain without a failed client request, so it can be stopped or upgraded.",
        discussion: """
            Asks the master to remove the node gracefully and waits until the chain runs without \
            it. The master stops renewing the node's lease; with the first heartbeat reply that \
            grants none the node stops taking writes and reads (writes it already took still \
            commit) and says so in its next heartbeat, and the master reconfigures the chain without it then — a pause of a \
            heartbeat or two for the writes and reads routed to it, which clients retry through, \
            not a lease. The node then exits. To bring it back: start it again (upgraded or not) \
            and run `catena chain add-node ID --address HOST:PORT --wait`: it catches up from \
            the tail and is appended as the new tail. Refused for the last member of a chain.
            """
    )

    @Argument(help: "The node's id.") var id: String
    @Flag(help: "Print the chain's status as JSON when done.") var json = false
    @Option(help: "Give up waiting after this many seconds (exit status 3).") var waitTimeout: Double = 60
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let node = try NodeID(id)
        let admin = try options.admin()
        let before = try await admin.removeNode(node)
        let address = before.nodes.first { $0.id == node }?.address
        let after = try await waitUntilGone(node, admin: admin, from: before, timeout: .milliseconds(Int(waitTimeout * 1000)))
        if json {
            print(try StatusJSON(after).text(), terminator: "")
        } else {
            print("drained \(id): the chain runs without it at epoch \(after.epoch)\n")
            print(StatusTable.render(after), terminator: "")
            print("\nto bring it back: start it again, then catena chain add-node \(id) --address \(address ?? "HOST:PORT") --wait")
        }
    }
}

/// Polls the master until `node` is no member of the chain and no longer listed; returns the
/// status then. Progress (role, lease left) goes to stderr on a terminal.
func waitUntilGone(_ node: NodeID, admin: ChainAdmin, from first: ChainStatus, timeout: Duration) async throws -> ChainStatus {
    let progress = ProgressLine()
    defer { progress.finish() }
    let started = ContinuousClock.now
    var status = first
    while true {
        guard let n = status.nodes.first(where: { $0.id == node }) else { return status }
        let elapsed = ContinuousClock.now - started
        guard elapsed < timeout else {
            throw CatenaError(.timeout, "\(node) is still listed after " + String(format: "%.1f s", elapsed.secondsValue) + " (\(n.role.map { "\($0)" } ?? "not a member"), \(n.health))")
        }
        progress.show("removing \(node): \(n.role.map { "\($0)" } ?? "not a member"), \(n.health)"
                      + (n.leaseMilliseconds.map { ", lease \($0) ms" } ?? ", no lease") + ", epoch \(status.epoch), "
                      + String(format: "%.1f s", elapsed.secondsValue))
        try await Task.sleep(for: .milliseconds(100))
        status = try await admin.status()
    }
}

/// Polls until `node` is a member of the chain that serves (holds a lease: it has everything
/// committed before it joined); returns the status then. Progress — what the
/// node copied, its rate, the time left by its lag — comes from the node itself (`catena node
/// status`), shown on stderr on a terminal.
func waitUntilMember(_ node: NodeID, address: String, admin: ChainAdmin, timeout: Duration) async throws -> ChainStatus {
    let progress = ProgressLine()
    defer { progress.finish() }
    let started = ContinuousClock.now
    var samples: [(at: ContinuousClock.Instant, bytes: UInt64, lag: UInt64?)] = []
    while true {
        let status = try await admin.status()
        let n = status.nodes.first { $0.id == node }
        // A member by the master, and by its own view serving: a lease, nothing committed before
        // it joined still missing (the master's lease figure is only an upper bound).
        let own = try? await admin.nodeStatus(at: address)
        if let n, n.role != nil, let own, own.role != nil, own.leaseMilliseconds != nil, !own.readsBlocked { return status }
        let elapsed = ContinuousClock.now - started
        guard elapsed < timeout else {
            throw CatenaError(.timeout, "\(node) is not a member after \(String(format: "%.1f s", elapsed.secondsValue))"
                              + (n.map { ": \($0.health), \($0.lagRecords) records behind" } ?? ": the master does not list it; is it running?"))
        }
        var line = "adding \(node): "
        if let own, let c = own.catchUp {
            samples.append((ContinuousClock.now, c.bytes, c.lagRecords))
            samples = samples.suffix(20)
            line += String(format: "copied %.1f MiB", Double(c.bytes) / 1_048_576)
            if let first = samples.first, let last = samples.last, last.at > first.at, last.bytes > first.bytes {
                let rate = Double(last.bytes - first.bytes) / (last.at - first.at).secondsValue
                line += String(format: " at %.1f MB/s", rate / 1e6)
                if let lag = last.lag, let firstLag = first.lag, firstLag > lag {
                    let perSecond = Double(firstLag - lag) / (last.at - first.at).secondsValue
                    line += String(format: ", %llu records behind, about %.0f s left", lag, Double(lag) / max(perSecond, 1e-9))
                } else if let lag = last.lag {
                    line += ", \(lag) records behind"
                }
            }
        } else {
            line += n.map { "\($0.health), \($0.lagRecords) records behind" } ?? "waiting for it to heartbeat"
        }
        progress.show(line + String(format: ", %.1f s", elapsed.secondsValue))
        try await Task.sleep(for: .milliseconds(200))
    }
}

/// One line of progress on stderr, redrawn in place, shown only on a terminal.
final class ProgressLine {
    private let enabled = isatty(STDERR_FILENO) == 1
    private var drawn = false

    func show(_ line: String) {
        guard enabled else { return }
        FileHandle.standardError.write(Data(("\r" + line + "\u{1B}[K").utf8))
        drawn = true
    }

    func finish() {
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        drawn = false
    }
}
