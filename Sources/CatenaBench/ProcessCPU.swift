#if canImport(Glibc)
import Glibc
#endif

/// CPU time a process has used, user and system apart, in seconds.
public struct CPUTime: Hashable, Sendable {
    /// Seconds in user mode.
    public var user: Double
    /// Seconds in the kernel on the process's behalf (system calls, page faults, ...).
    public var system: Double

    /// User and system together.
    public var total: Double { user + system }

    /// Creates a reading.
    public init(user: Double, system: Double) {
        self.user = user
        self.system = system
    }

    /// What a process used between two readings.
    public static func - (later: CPUTime, earlier: CPUTime) -> CPUTime {
        CPUTime(user: later.user - earlier.user, system: later.system - earlier.system)
    }

    /// All threads of process `pid` so far, from `/proc/PID/stat` (clock ticks, usually 10 ms);
    /// nil when the process is gone or the file cannot be read.
    public static func of(pid: Int32) -> CPUTime? {
        guard let text = readSmallFile("/proc/\(pid)/stat") else { return nil }
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are
        // counted from the last ')'. utime and stime are fields 14 and 15 (1-based).
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let utime = Double(fields[11]), let stime = Double(fields[12]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return CPUTime(user: utime / ticks, system: stime / ticks)
    }

    /// All threads of this process so far (`getrusage`, microseconds).
    public static func ofSelf() -> CPUTime {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return CPUTime(user: seconds(usage.ru_utime), system: seconds(usage.ru_stime))
    }

    private static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: bytes[..<n], as: UTF8.self)
    }
}

/// The CPU time of each process of a benchmark run over one measurement: the benchmark's own
/// process (the clients) and every process of its cluster.
public struct CPUAccount: Hashable, Sendable {
    /// One process's share.
    public struct Share: Hashable, Sendable {
        /// "client", "master", "n1", ...
        public var process: String
        /// CPU time used during the measurement.
        public var cpu: CPUTime
    }

    /// Every process, the client first.
    public var shares: [Share]

    /// All processes together.
    public var total: CPUTime {
        shares.reduce(CPUTime(user: 0, system: 0)) { CPUTime(user: $0.user + $1.cpu.user, system: $0.system + $1.cpu.system) }
    }

    /// A reading of the client (this process) and each of `processes` (name, pid).
    public struct Reading: Sendable {
        var readings: [(name: String, cpu: CPUTime?)]

        /// Reads now.
        public init(processes: [(name: String, pid: Int32)]) {
            readings = [("client", CPUTime.ofSelf())] + processes.sorted { $0.name < $1.name }.map { ($0.name, CPUTime.of(pid: $0.pid)) }
        }
    }

    /// An account of these shares (for reports made up in tests).
    init(shares: [Share]) {
        self.shares = shares
    }

    /// What each process used from `start` to `end` (a process missing from either is left out).
    public init(from start: Reading, to end: Reading) {
        shares = []
        for (name, after) in end.readings {
            guard let after, let before = start.readings.first(where: { $0.name == name })?.cpu else { continue }
            shares.append(Share(process: name, cpu: after - before))
        }
    }
}
