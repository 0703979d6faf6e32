import CatenaCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A cluster of `catena` processes on this machine — the master and every node of a topology —
/// as started by `catena up`, the process-level tests and the chain benchmark.
///
/// Each child gets `CATENA_PARENT_PID`, so it shuts itself down if this process dies, however it
/// dies. The children's ready lines (`ready master ADDR`, `ready node ID ADDR …`) on their stdout
/// tell their real addresses, so topologies may use port 0. ``stop(timeout:)`` sends SIGTERM
/// (nodes first, the master last), waits, then SIGKILLs what is left.
public final class LocalCluster: @unchecked Sendable {
    // Mutable state (`children`) is guarded by `lock`.

    /// One child process.
    public struct Child: Sendable {
        /// `master` or the node id.
        public var name: String
        /// Its process id.
        public var pid: Int32
        /// The address it announced.
        public var address: Address
    }

    /// The `catena` executable.
    public let executable: String
    /// The topology file the children read.
    public let topologyPath: String
    private let lock = NSLock()
    private var processes: [String: Process] = [:]
    private var started: [Child] = []
    private var arguments: [String: [String]] = [:]
    private var stderr: FileHandle?

    private init(executable: String, topologyPath: String) {
        self.executable = executable
        self.topologyPath = topologyPath
    }

    /// Starts the master, waits for its ready line, then starts every node with the master's
    /// real address and waits for all their ready lines. `stderr`: where children log (nil:
    /// discarded). On failure, whatever was started is stopped.
    public static func start(
        executable: String, topologyPath: String, logLevel: String = "info", nodeArguments: [String] = [],
        stderr: FileHandle? = FileHandle.standardError, readyTimeout: Duration = .seconds(30)
    ) async throws(CatenaError) -> LocalCluster {
        let topology = try Topology.load(path: topologyPath)
        let cluster = LocalCluster(executable: executable, topologyPath: topologyPath)
        do {
            let master = try await cluster.spawn(
                name: "master", arguments: ["master", "--topology", topologyPath, "--log-level", logLevel],
                stderr: stderr, timeout: readyTimeout)
            let masterAddress = master.address
            try await withThrowingTaskGroup(of: Void.self) { group in
                for node in topology.nodes {
                    group.addTask {
                        _ = try await cluster.spawn(
                            name: node.id.rawValue,
                            arguments: ["node", "--id", node.id.rawValue, "--topology", topologyPath, "--master", masterAddress.description,
                                        "--log-level", logLevel] + nodeArguments,
                            stderr: stderr, timeout: readyTimeout)
                    }
                }
                try await group.waitForAll()
            }
        } catch {
            await cluster.stop(timeout: .seconds(5))
            throw (error as? CatenaError) ?? CatenaError(.unavailable, "\(error)")
        }
        return cluster
    }

    /// The children started, master first.
    public var children: [Child] { lock.withLock { started } }

    /// The master's address.
    public var masterAddress: Address { children.first { $0.name == "master" }!.address }

    /// The child called `name`.
    public func child(_ name: String) -> Child? { children.first { $0.name == name } }

    /// Sends `signal` to the child called `name`.
    public func signal(_ name: String, _ signal: Int32) {
        if let pid = child(name)?.pid { kill(pid, signal) }
    }

    /// Whether the child called `name` is still running.
    public func isRunning(_ name: String) -> Bool {
        lock.withLock { processes[name]?.isRunning ?? false }
    }

    /// The peak resident set size (VmHWM) of the child called `name`, in bytes, read from /proc.
    public func peakResidentBytes(_ name: String) -> Int? {
        guard let pid = child(name)?.pid,
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else {
            return nil
        }
        return kib * 1024
    }

    /// Stops every child: SIGTERM to the nodes, then the master; SIGKILL after `timeout`.
    public func stop(timeout: Duration = .seconds(10)) async {
        let all = lock.withLock { processes }
        let order = all.keys.sorted { a, b in a == "master" ? false : b == "master" ? true : a < b }
        for name in order where name != "master" {
            if let p = all[name], p.isRunning { kill(p.processIdentifier, SIGTERM) }
        }
        await waitForExit(order.filter { $0 != "master" }.compactMap { all[$0] }, timeout: timeout)
        if let master = all["master"], master.isRunning {
            kill(master.processIdentifier, SIGTERM)
            await waitForExit([master], timeout: timeout)
        }
    }

    /// Waits until the child called `name` exits; returns its status (nil on timeout).
    public func waitForExit(_ name: String, timeout: Duration) async -> Int32? {
        guard let p = lock.withLock({ processes[name] }) else { return nil }
        await waitForExit([p], timeout: timeout)
        return p.isRunning ? nil : p.terminationStatus
    }

    /// Waits up to `timeout` for `list` to exit (less if the task is cancelled), then SIGKILLs
    /// the ones still running and waits until they are reaped.
    private func waitForExit(_ list: [Process], timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        while list.contains(where: \.isRunning), ContinuousClock.now < deadline {
            do {
                try await Task.sleep(for: .milliseconds(20))
            } catch {
                break  // cancelled: no more grace
            }
        }
        for p in list where p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            await reaped(p)
        }
    }

    /// Waits until the SIGKILLed `process` has been reaped (10 s at most), also in a cancelled
    /// task, without blocking a thread (`waitUntilExit` would hold one of the cooperative pool's,
    /// the only one on a one-core machine, and a cancelled task's `Task.sleep` returns at once).
    private func reaped(_ process: Process) async {
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning, ContinuousClock.now < deadline {
            await Task { try? await Task.sleep(for: .milliseconds(5)) }.value
        }
    }

    /// Starts the child called `name` again with the arguments it was first started with (after
    /// killing it if it still runs) and waits for its ready line: a node restarting with its
    /// data directory. Its address may change (port 0).
    @discardableResult
    public func restart(_ name: String, timeout: Duration = .seconds(30)) async throws(CatenaError) -> Child {
        let (old, args, errors): (Process?, [String]?, FileHandle?) = lock.withLock { (processes[name], arguments[name], stderr) }
        guard let args else { throw CatenaError(.notFound, "no child called \(name)") }
        if let old, old.isRunning {
            kill(old.processIdentifier, SIGKILL)
            await reaped(old)
        }
        lock.withLock { started.removeAll { $0.name == name } }
        return try await spawn(name: name, arguments: args, stderr: errors, timeout: timeout)
    }

    /// Starts one more child called `name`, a `catena` process with `arguments` (a node that is
    /// not in the topology, say, to be added with `catena chain add-node`), logging where the
    /// cluster's children log, and waits for its ready line. ``stop(timeout:)`` stops it with
    /// the others, ``restart(_:timeout:)`` restarts it. Throws `invalidArgument` if a child of
    /// that name exists.
    @discardableResult
    public func startChild(_ name: String, arguments: [String], timeout: Duration = .seconds(30)) async throws(CatenaError) -> Child {
        let (exists, errors): (Bool, FileHandle?) = lock.withLock { (processes[name] != nil, stderr) }
        guard !exists else { throw CatenaError(.invalidArgument, "the cluster already has a child called \(name)") }
        return try await spawn(name: name, arguments: arguments, stderr: errors, timeout: timeout)
    }

    /// Starts one child and waits for its ready line.
    private func spawn(name: String, arguments: [String], stderr: FileHandle?, timeout: Duration) async throws(CatenaError) -> Child {
        lock.withLock {
            self.arguments[name] = arguments
            self.stderr = stderr
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["CATENA_PARENT_PID"] = "\(getpid())"
        process.environment = environment
        let stdout = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr ?? FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        let lines = ReadyLine()
        do {
            try process.run()
        } catch {
            throw CatenaError(.unavailable, "cannot start \(executable): \(error)")
        }
        lock.withLock { processes[name] = process }
        // The first ready line of the child's stdout wins.
        readLines(of: stdout.fileHandleForReading) { line in
            if line.hasPrefix("ready ") { lines.deliver(line) }
        } atEnd: {
            lines.deliver(nil)
        }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            switch lines.value {
            case .some(.some(let line)):
                // `ready master ADDR` or `ready node ID ADDR …`
                let words = line.split(separator: " ").map(String.init)
                let addressWord = words.count > 2 && words[1] == "node" ? words[3] : words[2]
                let address = try Address(parsing: addressWord)
                let child = Child(name: name, pid: process.processIdentifier, address: address)
                lock.withLock { started.append(child) }
                return child
            case .some(.none):
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }  // its stdout closed: it is going
                await reaped(process)
                let status = process.isRunning ? "its stdout closed" : "it exited with status \(process.terminationStatus)"
                throw CatenaError(.unavailable, "\(name) was not ready: \(status)")
            case .none:
                do {
                    try await Task.sleep(for: .milliseconds(10))
                } catch {
                    kill(process.processIdentifier, SIGKILL)
                    await reaped(process)
                    throw CatenaError(.cancelled, "cancelled while \(name) was starting")
                }
            }
        }
        throw CatenaError(.timeout, "\(name) was not ready within \(timeout)")
    }
}

/// Reads `handle` line by line on a thread of its own until end of file, calling `onLine` for
/// each line (without its newline) and `atEnd` once at the end: how a parent follows a child's
/// stdout.
public func readLines(of handle: FileHandle, _ onLine: @escaping @Sendable (String) -> Void,
                      atEnd: @escaping @Sendable () -> Void = {}) {
    Thread.detachNewThread {
        var buffer = Data()
        while true {
            let data = handle.availableData
            if data.isEmpty { break }
            buffer.append(data)
            while let newline = buffer.firstIndex(of: 0x0A) {
                onLine(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...newline)
            }
        }
        atEnd()
    }
}

/// The first ready line of a child (or nil: its stdout closed first).
private final class ReadyLine: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var line: String??

    var value: String?? { lock.withLock { line } }

    func deliver(_ text: String?) {
        lock.withLock { if line == nil { line = .some(text) } }
    }
}
