"""torch.compile: every arch in every mode traces as one graph (forward and backward) that later iterations reuse,
compiled and eager numbers agree, and ``train.compile`` / ``val.compile`` compile a run's networks."""
import copy
import os

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import cadyq_plugin  # noqa: F401  (before basicsr: import-time fixes)
from basicsr.archs import build_network
from cadyq_plugin.archs import EDSR_CADyQ
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.convert import convert_state_dict
from cadyq_plugin.models.compiling import NetworkCompileError, NetworkCompiler, check_compile_value
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.quant import BitSelector, PAMSQuant, set_calibration
from cadyq_plugin.options import read_yml
from tiny_workspace import OPTIONS, logged_losses, make_tiny_pairs, run_cli, tiny_stage_options

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference', 'edsr_cadyq_golden.pt')
TINY_EDSR = {'num_feat': 8, 'num_block': 1}
SMALL = {
    'EDSR_CADyQ': {'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 2},
    'CARN_CADyQ': {'type': 'CARN_CADyQ', 'num_feat': 8, 'num_block': 1, 'num_res_block': 2},
    'IDN_CADyQ': {'type': 'IDN_CADyQ', 'num_feat': 16, 'num_block': 1, 'd': 4},
    'SRResNet_CADyQ': {'type': 'SRResNet_CADyQ', 'num_feat': 8, 'num_block': 2},
    'wrapped EDSR': {'type': 'CADyQWrapper', 'backbone': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3,
                                                          'num_feat': 8, 'num_block': 2, 'upscale': 4}},
    'wrapped RCAN': {'type': 'CADyQWrapper', 'backbone': {'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3,
                                                          'num_feat': 16, 'num_group': 1, 'num_block': 2,
                                                          'squeeze_factor': 4, 'upscale': 4}},
}


def randomise(net, seed=0):
    """Random ranges and selectors, so that the chosen bits differ between samples, layers and iterations."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, PAMSQuant):
                module.alpha.uniform_(0.5, 4.0, generator=gen)
            elif isinstance(module, BitSelector):
                module.fc.weight.normal_(0, 0.05, generator=gen)
                module.fc.bias.normal_(0, 0.5, generator=gen)
    return net


def training_loss(sr, aux):
    """A loss that reaches every output of a training forward (image, bits, body, block features)."""
    return sr.square().mean() + 1e-2 * aux['weighted_bits'].sum() + aux['body'].mean() + sum(
        f.abs().mean() for f in aux['feats'])


def batches(n, seed, size=12):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, size, size, generator=gen) for _ in range(n)]


def train_steps(net, inputs, optimizer, calibrating):
    set_calibration(net, calibrating)
    bits = []
    for x in inputs:
        optimizer.zero_grad()
        sr, aux = net(x, return_aux=True)
        training_loss(sr, aux).backward()
        optimizer.step()
        bits.append(aux['bits'])
    return bits


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------ one graph, compiled once
@pytest.mark.parametrize('mode', ['fp', 'pams', 'cadyq'])
@pytest.mark.parametrize('arch', list(SMALL))
def test_one_graph_without_recompilation(arch, mode, fresh_dynamo):
    """Training forward and backward (traced by AOT autograd) and eval: no graph break (``fullgraph``); one graph
    while calibrating, one after it, and none from one iteration to the next (new batches, other bits, updated
    weights: ``error_on_recompile``); eval adds one graph."""
    torch.manual_seed(0)
    net = randomise(build_network(dict(SMALL[arch], quant_mode=mode))).train()
    net.compile(backend='aot_eager', fullgraph=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    train_steps(net, batches(2, 1), optimizer, calibrating=True)
    train_steps(net, batches(1, 2), optimizer, calibrating=False)  # leaving calibration: the one recompilation
    with torch._dynamo.config.patch(error_on_recompile=True):
        bits = train_steps(net, batches(3, 3), optimizer, calibrating=False)
    expected = 2 if mode != 'fp' else 1  # an fp network has nothing to calibrate
    assert counters['stats']['unique_graphs'] == expected and not counters['graph_break']
    if mode == 'cadyq':
        assert torch.cat(bits).unique().numel() > 1, 'the iterations choose different bits'
    net.eval()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=False):
        net(batches(1, 4)[0], return_aux=True)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        net(batches(1, 5)[0], return_aux=True)
    assert counters['stats']['unique_graphs'] == expected + 1 and not counters['graph_break']


def test_explain_finds_no_graph_break(fresh_dynamo):
    """The same check through ``torch._dynamo.explain`` (one arch; the test above covers all with fullgraph)."""
    net = randomise(build_network(dict(SMALL['EDSR_CADyQ'], quant_mode='cadyq'))).train()
    set_calibration(net, True)
    explanation = torch._dynamo.explain(lambda x: training_loss(*net(x, return_aux=True)))(batches(1, 0)[0])
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


# ------------------------------------------------------------------------------------ compile options
@pytest.mark.parametrize('value,ok', [(True, True), (False, True), (None, True), ('reduce-overhead', True),
                                      ('max-autotune', True), ('fast', False), (1, False), ({'mode': 'x'}, False)])
def test_compile_values(value, ok):
    assert (check_compile_value(value) is None) == ok


def test_the_options_check_names_a_bad_compile_value():
    """``train.compile`` / ``val.compile`` are known keys (``--force_yml`` accepts them), with their values
    checked before any work, and refused for a model that would ignore them."""
    stage3 = os.path.join(OPTIONS, 'train_edsrbaseline_cadyq.yml')
    opt = read_yml(stage3)
    opt['train']['compile'], opt['val']['compile'] = 'reduce-overhead', True
    check_options(opt, stage3, 'train', check_files=False)
    opt['train']['compile'] = 'fastest'
    with pytest.raises(ConfigError, match=r"train.compile = 'fastest': expected true, false or a torch.compile mode"):
        check_options(opt, stage3, 'train', check_files=False)
    stage1 = os.path.join(OPTIONS, 'train_edsrbaseline_fp.yml')
    opt = read_yml(stage1)
    opt['model_type'], opt['train']['compile'] = 'SRModel', True
    with pytest.raises(ConfigError) as refused:
        check_options(opt, stage1, 'train', check_files=False)
    assert refused.value.problems == ["train.compile = True: expected false (only the plugin's models, CADyQSRModel "
                                      'and CADyQModel, compile their networks; SRModel does not)']


def test_defaults_per_device():
    cpu = NetworkCompiler({}, 'cpu')
    assert not cpu.enabled('train') and not cpu.enabled('val')
    cuda = NetworkCompiler({'num_gpu': 1}, 'cuda')
    assert cuda.enabled('train') and not cuda.enabled('val')
    forced = NetworkCompiler({'train': {'compile': False}, 'val': {'compile': 'max-autotune'}}, 'cuda')
    assert not forced.enabled('train') and forced.modes['val'] == 'max-autotune'


def test_data_parallel_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert not NetworkCompiler({'num_gpu': 2}, 'cuda').enabled('train'), 'the default does not compile DataParallel'
    with pytest.raises(NetworkCompileError, match='DataParallel.*torchrun.*train.compile: false'):
        NetworkCompiler({'num_gpu': 2, 'train': {'compile': True}}, 'cuda')
    assert NetworkCompiler({'num_gpu': 2, 'dist': True, 'train': {'compile': True}}, 'cuda').enabled('train')


def test_a_compile_failure_names_the_network_and_the_cause(fresh_dynamo):
    """A construct torch.compile cannot trace in one graph stops the step (no eager fallback): the error names the
    network that failed and why, and says how to run without compiling."""

    class Untraceable(type(build_network(dict(SMALL['EDSR_CADyQ'], quant_mode='fp')))):

        def forward_features(self, x, record):
            torch._dynamo.graph_break()
            return super().forward_features(x, record)

    compiler = NetworkCompiler({'train': {'compile': True}}, 'cpu')
    net = compiler.prepare(Untraceable(quant_mode='fp', num_feat=8, num_block=1), 'student Untraceable (network_g)',
                           'train')
    with pytest.raises(NetworkCompileError) as failure:
        with compiler.running('train', 'the first step'):
            net(batches(1, 0)[0])
    message = str(failure.value)
    assert 'train.compile: torch.compile failed on the student Untraceable (network_g)' in message
    assert 'graph_break' in message.lower() or 'graph break' in message.lower(), message
    assert message.endswith('Set train.compile: false to run without compiling')


def test_a_phase_that_does_not_compile_runs_eagerly(fresh_dynamo):
    """``val.compile: false`` with ``train.compile: true``: the same (compiled) module runs eagerly in validation."""
    compiler = NetworkCompiler({'train': {'compile': True}}, 'cpu')
    net = build_network(dict(SMALL['EDSR_CADyQ'], quant_mode='cadyq')).eval()
    compiler.prepare(net, 'student', 'train')
    compiler.prepare(net, 'student', 'val')
    with torch.no_grad(), compiler.running('val', 'the first inference'):
        net(batches(1, 0)[0])
    assert not counters['stats']['unique_graphs'] and not compiler.started('val')


# ------------------------------------------------------------------------------------ same numbers (inductor)
def test_compiled_golden_vectors(fresh_dynamo):
    """The original implementation's golden vectors, compiled (inductor, float32): every selector chooses the
    golden bit and the output is the eager output (the eager network reproduces the golden vectors)."""
    golden = torch.load(GOLDEN, weights_only=True)
    net = EDSR_CADyQ()
    net.load_state_dict(convert_state_dict(golden['state_dict'], net, 'EDSR_CADyQ', 'cadyq', 4)[0])
    x = golden['input_0_255'] / 255.0
    with torch.no_grad():
        eager_sr, _ = net.eval()(x, return_aux=True)
        net.compile(fullgraph=True)
        sr, aux = net(x, return_aux=True)
    assert torch.equal(aux['bits'], golden['selector_bits'].float())
    assert (sr * 255 - golden['sr_0_255']).abs().max() < 1e-3
    assert (aux['body'] - golden['body_out']).abs().max() < 1e-3
    assert (sr - eager_sr).abs().max() < 1e-6


def test_compiled_training_matches_eager(fresh_dynamo):
    """Training steps (one calibrating, two after it, SGD in between), compiled (inductor) and eager, in float64:
    the same bits, outputs and gradients of every parameter. (In float32 the selector's gradients are
    differences of per-candidate sums where the softmax saturates, and the two codes sum in different orders, so
    there they agree only to the round-off of those sums; float64 shows that the compiled graph computes the
    same gradients.)"""
    torch.manual_seed(0)
    eager = randomise(build_network(dict(SMALL['EDSR_CADyQ'], quant_mode='cadyq', num_block=1))).double().train()
    compiled = copy.deepcopy(eager)
    compiled.compile(fullgraph=True)
    optimizers = [torch.optim.SGD(net.parameters(), lr=1e-2) for net in (eager, compiled)]
    for step, x in enumerate(batches(3, 1)):
        results = []
        for net, optimizer in zip((eager, compiled), optimizers):
            set_calibration(net, step == 0)
            optimizer.zero_grad()
            sr, aux = net(x.double(), return_aux=True)
            training_loss(sr, aux).backward()
            results.append((sr.detach(), aux['bits'], {name: p.grad.clone() for name, p in net.named_parameters()}))
            optimizer.step()
        (sr_eager, bits_eager, grads_eager), (sr_compiled, bits_compiled, grads_compiled) = results
        assert torch.equal(bits_compiled, bits_eager)
        assert (sr_compiled - sr_eager).abs().max() < 1e-12
        for name, grad in grads_eager.items():
            assert torch.allclose(grads_compiled[name], grad, rtol=1e-9, atol=1e-9 * float(grad.abs().max())), name
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(eager.parameters(), compiled.parameters()))


# ------------------------------------------------------------------------------------ basicsr train
@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """Tiny real pairs and a tiny PAMS EDSR checkpoint (the stage-2 output a stage-3 run starts from)."""
    root = tmp_path_factory.mktemp('compile')
    data = make_tiny_pairs(str(root / 'data'))
    torch.manual_seed(0)
    fp = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **TINY_EDSR})
    pams = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'pams', **TINY_EDSR})
    load_stage_weights(pams, fp.state_dict(), 'fp')
    torch.save({'params': pams.state_dict()}, root / 'pams.pth')
    return {'data': data, 'pams': str(root / 'pams.pth')}


def cadyq_options(workspace, workdir, total_iter):
    keys = {f'network_{net}.{key}': value for net in 'gt' for key, value in TINY_EDSR.items()}
    keys.update({'path.pretrain_network_t': workspace['pams'], 'path.pretrain_network_g': workspace['pams'],
                 'logger.use_tb_logger': False, 'network_g.calib_iters': 1, 'train.bit_opt.loss_weight': 0.05,
                 'train.optim_selector.lr': 0.05})
    os.makedirs(workdir, exist_ok=True)
    return tiny_stage_options(str(workdir), workspace['data'], 'train_edsrbaseline', 'cadyq', total_iter, **keys)


def test_basicsr_train_compiles_and_resumes_exactly(workspace, tmp_path):
    """``basicsr train -opt options/train_edsrbaseline_cadyq.yml --force_yml train:compile=true`` (here on a tiny
    network, with validation compiled too): the log gives the compile time of the first step and of the step
    that ends calibration; a run stopped after 2 iterations and resumed to 4 logs the same losses and ends with
    the same weights as 4 iterations in one go (compiled code is deterministic)."""
    force = ['--force_yml', 'train:compile=true', 'val:compile=true']
    once, twice = tmp_path / 'once', tmp_path / 'twice'
    proc = run_cli(['train', '-opt', cadyq_options(workspace, once, 4)] + force, cwd=str(once), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'train.compile (default): the first step took' in proc.stderr
    assert 'train.compile (default): the first step after calibration (iter 2' in proc.stderr
    assert 'val.compile (default): the first inference took' in proc.stderr
    for total in (2, 4):
        proc = run_cli(['train', '-opt', cadyq_options(workspace, twice, total), '--auto_resume'] + force,
                       cwd=str(twice), timeout=1500)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming training from epoch' in proc.stderr
    experiments = [os.path.join(str(d), 'experiments', 'EDSR_cadyq_x4') for d in (once, twice)]
    reference, resumed = (logged_losses(e) for e in experiments)
    assert sorted(reference) == sorted(resumed) == [1, 2, 3, 4]
    assert all(set(resumed[it]) == set(reference[it]) for it in reference)
    weights = [torch.load(os.path.join(e, 'models', 'net_g_latest.pth'), weights_only=True)['params']
               for e in experiments]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_compiled_wrapper_keeps_parity_with_the_hand_written_edsr(fresh_dynamo):
    """The wrapper/EDSR_CADyQ training parity (``test_wrapper_arch``) with both networks compiled (inductor,
    float64, a calibrating step and one after it): the same bits, body and block features, outputs to 1e-12 and
    every gradient to 1e-6 relative, as in eager mode."""
    small = {'num_feat': 8, 'num_block': 2}
    mean = (0.5, 0.5, 0.5)
    torch.manual_seed(0)
    reference = randomise(EDSR_CADyQ(quant_mode='cadyq', rgb_mean=mean, **small)).double().train()
    net = build_network({'type': 'CADyQWrapper', 'quant_mode': 'cadyq', 'backbone': dict(
        SMALL['wrapped EDSR']['backbone'], rgb_mean=mean, **small)}).double().train()
    net.load_state_dict(reference.state_dict(), strict=True)
    reference.compile(fullgraph=True)
    net.compile()
    x = torch.randint(0, 257, (3, 3, 12, 10), generator=torch.Generator().manual_seed(1)).double() / 256
    for calibrating in (True, False):
        outputs = []
        for model in (net, reference):
            set_calibration(model, calibrating)
            model.zero_grad()
            sr, aux = model(x, return_aux=True)
            (sr.square().mean() + aux['weighted_bits'].sum() + aux['body'].mean()).backward()
            outputs.append((sr, aux))
        (sr, aux), (sr_ref, aux_ref) = outputs
        assert torch.equal(aux['bits'], aux_ref['bits']) and torch.equal(aux['body'], aux_ref['body'])
        assert all(torch.equal(f, f_ref) for f, f_ref in zip(aux['feats'], aux_ref['feats']))
        assert torch.allclose(sr, sr_ref, rtol=0, atol=1e-12)
        grads = dict(reference.named_parameters())
        for name, param in net.named_parameters():
            expected = grads[name].grad
            assert torch.allclose(param.grad, expected, rtol=1e-6, atol=1e-9 * float(expected.abs().max())), name
    assert aux['bits'].unique().numel() > 1, 'the test needs bits that vary'
