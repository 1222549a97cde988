"""summarize.py COMPARE_LOG - the medians compare.sh prints at the end of a run.

Reads the `## round`, `FIO` and `COPY` lines of compare.sh's log and prints, per
server, the median over rounds of every fio column (bench-nbd.sh's output with a
server PID: MiB/s, IOPS, p99 latency, fio CPU, machine busy %, server CPU % and
server CPU ms per GiB) and of the nbdcopy round trip. When the log has an A/B of
two builds (own* against ownb*, compare.sh's ENVOL_B), also the ratio own ÷ ownb
of each round (the two ran back to back in it) and their median. Standard library only.
"""
import sys,re,statistics as st,collections
log=sys.argv[1]
fio=collections.defaultdict(list); cp=collections.defaultdict(list); mc={}
order=[]
for line in open(log):
    p=line.split()
    if line.startswith('## round'):
        mc[p[4]]=p[7].split('=')[-1]  # 'multi-conn=yes'
        if p[4] not in order: order.append(p[4])
    if line.startswith('FIO '):
        _,r,srv,w,mib,iops,p99,ccpu,busy,scpu,sms=p
        fio[(srv,w)].append(dict(mib=float(mib),iops=float(iops),p99=float(p99),ccpu=float(ccpu),busy=float(busy),scpu=float(scpu),sms=float(sms)))
    if line.startswith('COPY '):
        _,r,srv,d,*kv=p
        cp[(srv,d)].append({k:float(v) for k,v in (x.split('=') for x in kv)})
med=lambda xs:st.median(xs)
print('fio (nbd engine, 1 connection; -4c: 4 jobs, one connection each), median of %d rounds'%max((len(v) for v in fio.values()),default=0))
print(f'{"server":12} {"workload":10} {"MiB/s":>8} {"IOPS":>8} {"p99us":>7} {"srvCPU%":>7} {"srv ms/GiB":>10} {"fioCPU%":>7} {"busy%":>5}  MiB/s per round')
for s in order:
    for w in [b+s for s in ('','-4c') for b in ('seqwrite','seqread','randread','randwrite')]:
        v=fio.get((s,w))
        if not v: continue
        g=lambda k:med([x[k] for x in v])
        print(f'{s:12} {w:10} {g("mib"):8.0f} {g("iops"):8.0f} {g("p99"):7.0f} {g("scpu"):7.0f} {g("sms"):10.0f} {g("ccpu"):7.0f} {g("busy"):5.0f}  {[x["mib"] for x in v]}')
print()
print('nbdcopy of the whole export (out: to null:), median: wall s, MiB/s, server CPU s; mc: multi-conn advertised')
for s in order:
    for d in ['out','in','out-1c','in-1c']:
        v=cp.get((s,d))
        if not v: continue
        g=lambda k:med([x[k] for x in v])
        print(f'{s:12} {d:6} wall={g("wall_s"):6.2f}s {g("MiB/s"):6.0f} MiB/s srv_cpu={g("srv_cpu_s"):5.2f}s mc={mc[s]}  walls={[x["wall_s"] for x in v]}')

# A/B of two builds: own (this build) against ownb (ENVOL_B) on each transport.
pairs=[(a,'ownb'+a[3:]) for a in order if a in ('own','own-tcp','own-tls') and 'ownb'+a[3:] in order]
if pairs:
    print()
    print('A/B: own ÷ ownb, round by round (throughput: > 1 is own faster; srv CPU per GiB / copy srv CPU: < 1 is own cheaper)')
    for a,b in pairs:
        keys=sorted({k for k in list(fio)+list(cp) if k[0]==a})
        for (_,w) in keys:
            for kind,src,fields in (('fio',fio,('mib','sms')),('copy',cp,('MiB/s','srv_cpu_s'))):
                va,vb=src.get((a,w)),src.get((b,w))
                if not va or not vb: continue
                for f in fields:
                    rs=[x[f]/y[f] for x,y in zip(va,vb) if y[f]]
                    if rs: print(f'{a:8} {w:12} {f:10} median {med(rs):5.2f}  rounds {[round(x,2) for x in rs]}')
