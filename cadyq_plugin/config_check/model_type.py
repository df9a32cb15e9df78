"""The experiment's name and ``model_type``, and what kind of model the file asks for: requirements that belong to
one model are checked only for the models that need them."""
from cadyq_plugin.problems import did_you_mean
from cadyq_plugin.registries import lookup, registered_names

CADYQ_MODELS = ('CADyQSRModel', 'CADyQModel')


def model_class(opt):
    return lookup('MODEL', opt.get('model_type'))


def is_cadyq_model(opt):
    from cadyq_plugin.models import CADyQSRModel
    cls = model_class(opt)
    return isinstance(cls, type) and issubclass(cls, CADyQSRModel)


def is_distilling_model(opt):
    from cadyq_plugin.models import CADyQModel
    cls = model_class(opt)
    return isinstance(cls, type) and issubclass(cls, CADyQModel)


def needs_pixel_or_perceptual_loss(opt):
    """SRModel's training set-up (SRModel and the models that keep it) fails without either loss; GAN models
    and non-SR models build their own losses."""
    from basicsr.models.sr_model import SRModel
    from basicsr.models.srgan_model import SRGANModel
    cls = model_class(opt)
    return isinstance(cls, type) and issubclass(cls, SRModel) and not issubclass(cls, SRGANModel)


def check_name_and_model(opt, problems):
    if not isinstance(opt.get('name'), str) or not opt.get('name'):
        problems.add('name', opt.get('name'), 'expected the experiment name (a non-empty string)')
    model_type = opt.get('model_type')
    if model_class(opt) is None:
        problems.add('model_type', model_type, 'expected a registered model' + (
            did_you_mean(model_type, registered_names('MODEL')) or f', e.g. {CADYQ_MODELS[-1]!r} or '
            "'SRModel'"))
