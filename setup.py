"""Build script of the ROS 2 package pi0_policy (ament_python, src layout)."""

from glob import glob
from os.path import dirname, isdir

from setuptools import find_packages, setup

PACKAGE = 'pi0_policy'

setup(
    name=PACKAGE,
    version='0.1.0',
    package_dir={'': 'src'},
    packages=find_packages(where='src', exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.rviz')),
        (f'share/{PACKAGE}/config/robots', glob('config/robots/*.yaml')),
        # The demo's trained checkpoint (weights, config, norm stats, tokenizer, model card).
        *[(f'share/{PACKAGE}/{folder}', [f for f in glob(f'{folder}/*') if not isdir(f)])
          for folder in sorted({dirname(f) for f in glob('checkpoints/**/*', recursive=True)
                                if not isdir(f)})],
    ],
    install_requires=['setuptools', 'numpy', 'pyyaml', 'pillow', 'safetensors', 'sentencepiece',
                      'websockets', 'msgpack'],
    zip_safe=False,
    maintainer='pi0_ros maintainers',
    maintainer_email='maintainers@pi0-ros.dev',
    description='pi0 vision-language-action policy as a ROS 2 node, with embodiment adapters.',
    license='Apache-2.0',
    # `tests_require` makes colcon run 0 tests with current setuptools; the `test` extra works.
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'pi0-policy = pi0_policy.cli:main',
            'pi0_policy_node = pi0_policy.ros.policy_node:main',
            'aloha_sim_node = pi0_policy.ros.sim.sim_node:main',
            'pi0_sim_demo = pi0_policy.ros.sim.demo:main',
            'pi0_recorder = pi0_policy.ros.recorder_node:main',
            'scripted_teleop = pi0_policy.ros.sim.scripted_teleop:main',
        ],
    },
)
